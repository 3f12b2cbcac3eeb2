"""What gradscope.check costs next to the training step it protects.

Measures, in one run, on the same model and the same batch, side by side:

    (a) a bare training step: forward + backward with parameter gradients (no optimizer step);
    (b) gradscope.check, core: per-token loss, trained map, per-position gradient norms, findings, Report;
    (c) gradscope.check with every probe at its defaults (when this version of gradscope has probes): on this clean
        batch, the free screen of the core run's gradient (--breakdown adds (c) with one window per row);
    (d) Captum's LayerGradientXActivation (multiply_by_inputs=False: the gradient at the input embedding's and every
        decoder layer's output, reduced to per-position norms: what (b) reports for the loss), one attribution per
        target token, over --targets trained tokens.

Each case (model x sequence length) runs in a fresh Python process so that memory is measured from a clean
start. On the CPU, peak memory is the process's peak resident set (VmHWM, reset through /proc/self/clear_refs)
minus its resident set just before the row, with glibc's mmap threshold fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_)
so that every large tensor is mapped and unmapped on its own and the resident set follows live tensors; each
case first calibrates this on a tensor of known size. On CUDA it is torch.cuda.max_memory_allocated minus
memory_allocated before the row.

    python benchmarks/bench_check.py                       # every case, the table in Markdown
    python benchmarks/bench_check.py --cases tiny-llama-chat:512 --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_MODEL = ROOT / "fixtures" / "models" / "tiny-llama-chat"
MIB = 2**20
ROWS = ("a", "g", "b", "c", "m", "l", "d")
BREAKDOWN = ("f", "h", "w", "t")
FLOORS = {"b": "g", "c": "g", "l": "m"}
"""Each gradscope row's floor: what its depth computes with nothing of gradscope's around it."""
ROW_NAMES = {
    "a": "(a) bare training step",
    "g": "(g) floor of (b): forward + activation-only backward",
    "b": "(b) gradscope.check core",
    "c": "(c) core + all probes",
    "m": "(m) floor of (l): no-grad forward + the loss's backward",
    "l": "(l) gradscope.check depth='logits'",
    "d": "(d) Captum LayerGradientXActivation",
    "f": "forward only (no_grad)",
    "h": "gradscope.run.forward_backward",
    "w": "(c) with one window per row (--windows 1)",
    "t": "Captum, one target token",
}


@dataclass(frozen=True)
class Case:
    """One model x sequence length, with how often to repeat its rows."""

    model: str
    seq: int
    repeats: int
    captum_measured: int  # target tokens Captum really runs; the time is scaled to --targets

    @property
    def name(self) -> str:
        return f"{self.model}:{self.seq}"


# The 100M model takes seconds per step on two cores: fewer repeats, and Captum's time per target token (one full
# forward + backward each, the same work every time) is measured on a few targets and scaled. At 8,192 tokens a
# bare step takes minutes: one run per row, timed in the same call that measures its peak (repeats=0), no Captum.
CASES = (
    Case("tiny-llama-chat", 512, repeats=9, captum_measured=32),
    Case("tiny-llama-chat", 2048, repeats=5, captum_measured=16),
    Case("tiny-llama-chat", 8192, repeats=3, captum_measured=4),
    Case("llama-100m", 512, repeats=2, captum_measured=4),
    Case("llama-100m", 2048, repeats=1, captum_measured=1),
    Case("llama-100m", 8192, repeats=0, captum_measured=0),
)


# ---------------------------------------------------------------------------------------------------- worker side


def build_model(name: str, device: str, dtype: str):
    """The fixture model, or a ~100M-parameter Llama with random weights (seeded); its tokenizer or None."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from gradscope.model.load import load_model, load_tokenizer

    if name == "tiny-llama-chat":
        return load_model(FIXTURE_MODEL, device=device, dtype=dtype), load_tokenizer(FIXTURE_MODEL)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).to(device=device, dtype=getattr(torch, dtype))
    return model, None


def build_batch(model, seq: int, device: str) -> dict:
    """One row of ``seq`` tokens: a prompt (first half, label -100) and a completion closed by EOS."""
    import torch

    g = torch.Generator().manual_seed(1)
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(4, vocab, (1, seq), generator=g)
    ids[0, -1] = model.config.eos_token_id
    completion = torch.zeros_like(ids)
    completion[:, seq // 2 :] = 1
    labels = torch.where(completion.bool(), ids, -100)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "completion_mask": completion}
    return {k: v.to(device) for k, v in batch.items()}


def bare_step(model, batch) -> Callable[[], None]:
    """(a): what a trainer does per micro-batch before the optimizer: forward, backward into parameter .grad."""
    inputs = {k: v for k, v in batch.items() if k != "completion_mask"}

    def run() -> None:
        model(**inputs).loss.backward()
        model.zero_grad(set_to_none=True)

    return run


def forward_only(model, batch) -> Callable[[], None]:
    import torch

    inputs = {k: v for k, v in batch.items() if k != "completion_mask"}

    def run() -> None:
        with torch.no_grad():
            model(**inputs)

    return run


def activation_backward(model, batch) -> Callable[[], None]:
    """The floor of a per-position gradient map: forward, and a backward to the input embeddings' output with every
    parameter frozen (no parameter gradient), nothing else."""
    import torch

    inputs = {k: v for k, v in batch.items() if k not in ("completion_mask", "input_ids")}
    embedding = model.get_input_embeddings()

    def run() -> None:
        flags = [(p, p.requires_grad) for p in model.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        embeds = embedding(batch["input_ids"]).requires_grad_(True)
        loss = model(inputs_embeds=embeds, **inputs).loss
        torch.autograd.grad(loss, embeds)
        for p, flag in flags:
            p.requires_grad_(flag)

    return run


def loss_backward(model, batch) -> Callable[[], None]:
    """The floor of the masking-only depth: the network's forward without autograd, the LM head's output made a
    leaf, and the model's own loss function and its backward to that leaf, nothing else."""
    import torch

    inputs = {k: v for k, v in batch.items() if k not in ("completion_mask", "labels")}
    decoder, head = model.get_decoder(), model.get_output_embeddings()

    def run() -> None:
        with torch.no_grad():
            logits = head(decoder(**inputs).last_hidden_state)  # (B, T, V)
        logits.requires_grad_(True)
        loss = model.loss_function(logits, batch["labels"], vocab_size=model.config.vocab_size)
        torch.autograd.grad(loss, logits)

    return run


def run_only(model, batch) -> Callable[[], None]:
    from gradscope.data.batch import with_default_labels
    from gradscope.engine.run import forward_backward

    def run() -> None:
        forward_backward(model, with_default_labels(batch))

    return run


def probe_arguments() -> tuple[dict, dict, dict | None] | None:
    """check() keyword arguments for (b) without probes, (c) with all, and (c) with one window per row (None when
    check() has no windows); None when check() has no probes."""
    import gradscope

    params = inspect.signature(gradscope.check).parameters
    if "probes" not in params:
        return None
    default = params["probes"].default
    every = default if default not in (None, inspect.Parameter.empty, (), []) else ("causal", "packing", "weights")
    return {"probes": ()}, {"probes": every}, ({"probes": every, "windows": 1} if "windows" in params else None)


def has_depth() -> bool:
    """Whether this version of gradscope.check has the masking-only depth."""
    import gradscope

    return "depth" in inspect.signature(gradscope.check).parameters


def gradscope_check(model, batch, tokenizer, kwargs: dict) -> Callable[[], None]:
    """(b) / (c): the library call a user makes."""
    import gradscope

    def run() -> None:
        gradscope.check(model, batch, tokenizer=tokenizer, **kwargs)

    return run


def captum_targets(batch, n: int) -> list[int]:
    """n trained positions spread evenly over the completion."""
    trained = (batch["labels"][0] != -100).nonzero().flatten().tolist()
    trained = [p for p in trained if p > 0]
    step = max(1, len(trained) // n)
    return trained[::step][:n]


def captum_attribution(model, batch, targets: list[int]) -> Callable[[], None]:
    """(d): per target token, Captum's gradient at every decoder layer's output, reduced to per-position norms."""
    from captum.attr import LayerGradientXActivation

    from gradscope.model.layers import find_decoder_layers

    mask = batch["attention_mask"]

    def target_logprob(input_ids, attention_mask, position):  # (B,) log p(token at position | prefix)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        logp = logits[:, position - 1].float().log_softmax(-1)
        return logp.gather(-1, input_ids[:, position, None]).squeeze(-1)

    # The embedding output too: (b) reports the gradient there as well, which takes the backward through layer 0.
    layers = [model.get_input_embeddings(), *find_decoder_layers(model)]
    attribution = LayerGradientXActivation(target_logprob, layers, multiply_by_inputs=False)

    def run() -> None:
        for position in targets:
            grads = attribution.attribute(batch["input_ids"], additional_forward_args=(mask, position))
            [g.float().norm(dim=-1) for g in grads]  # (B, T) per layer, what (b) reports for the loss

    return run


class Memory:
    """Peak memory of one call: CUDA allocator statistics, or the process's resident set on the CPU."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.cuda = device.startswith("cuda")

    def peak_mib(self, fn: Callable[[], None], clock: str = "wall") -> tuple[float, float]:
        """(peak MiB above what was resident just before the call, seconds of the call)."""
        gc.collect()
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            before = self.torch.cuda.memory_allocated()
            seconds = timed(fn, True, clock)
            return (self.torch.cuda.max_memory_allocated() - before) / MIB, seconds
        before = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        seconds = timed(fn, False, clock)
        return (_status_kib("VmHWM") - before) / 1024, seconds


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def timed(fn: Callable[[], None], cuda: bool, clock: str = "wall") -> float:
    """Seconds of one call: wall clock, or this process's CPU time (immune to waiting for a shared CPU; with one
    torch thread it is the computation's own time)."""
    import torch

    now = time.process_time if clock == "cpu" else time.perf_counter
    if cuda:
        torch.cuda.synchronize()
    start = now()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return now() - start


def worker(case: Case, targets: int, device: str, dtype: str, wanted: str = "".join(ROWS), clock: str = "wall") -> dict:
    """Run every row of one case: warm up, one run each for peak memory, then timed repeats, interleaved."""
    import torch
    from transformers.utils import logging

    logging.set_verbosity_error()
    model, tokenizer = build_model(case.model, device, dtype)
    model.train()  # as a trainer runs it (these models have no dropout)
    batch = build_batch(model, case.seq, device)
    chosen = captum_targets(batch, targets)
    measured = chosen[: case.captum_measured]
    probes = probe_arguments()
    rows = _rows(model, batch, tokenizer, measured, probes, wanted)
    memory = Memory(device)
    calibration = memory.peak_mib(lambda: torch.ones(256 * MIB // 4, device=device).add_(1))[0]
    # Captum's peak is that of one target: each target is the same forward and backward.
    peak_fns = dict(rows, d=captum_attribution(model, batch, measured[:1]) if rows["d"] else None)
    if case.repeats:
        for fn in peak_fns.values():
            if fn is not None:
                fn()  # warm-up
    peaks, first = {}, {}
    for key, fn in peak_fns.items():
        if fn is not None:
            peaks[key], first[key] = memory.peak_mib(fn, clock)
    times = _timings(rows, case, memory.cuda, clock) if case.repeats else {k: [v] for k, v in first.items()}
    scale = len(chosen) / max(1, len(measured))
    return {
        "case": case.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": {k: statistics.median(v) * (scale if k == "d" else 1.0) for k, v in times.items()},
        "runs": {k: len(v) for k, v in times.items()},
        "peak_mib": peaks,
        "calibration_mib": calibration,
        "targets": len(chosen),
        "probes": probes is not None,
        "depth": has_depth(),
        "captum": _has_captum(),
        "captum_measured": len(measured),
        "single": not case.repeats,
    }


def _rows(model, batch, tokenizer, measured: list[int], probes, wanted: str) -> dict[str, Callable[[], None] | None]:
    """The rows to run, by key; None for a row not wanted or not available."""
    captum = _has_captum() and bool(measured)
    rows: dict[str, Callable[[], None] | None] = {
        "a": bare_step(model, batch),
        "g": activation_backward(model, batch),
        "b": gradscope_check(model, batch, tokenizer, probes[0] if probes else {}),
        "c": gradscope_check(model, batch, tokenizer, probes[1]) if probes else None,
        "m": loss_backward(model, batch),
        "l": gradscope_check(model, batch, tokenizer, {"depth": "logits"}) if has_depth() else None,
        "d": captum_attribution(model, batch, measured) if captum else None,
    }
    if set(BREAKDOWN) & set(
        wanted
    ):  # --breakdown: where (b)'s time goes, next to the floor any per-position gradient map pays
        windowed = probes[2] if probes else None
        rows.update(
            f=forward_only(model, batch),
            h=run_only(model, batch),
            w=gradscope_check(model, batch, tokenizer, windowed) if windowed else None,
            t=captum_attribution(model, batch, measured[:1]) if captum else None,
        )
    return {k: fn if k in wanted else None for k, fn in rows.items()}


def _timings(rows: dict, case: Case, cuda: bool, clock: str) -> dict[str, list[float]]:
    """Repeats interleaved row by row, so that a change in the machine's load falls on every row alike."""
    times: dict[str, list[float]] = {k: [] for k, fn in rows.items() if fn is not None}
    for r in range(case.repeats):
        for key, fn in rows.items():
            if fn is not None and (key != "d" or r < _captum_rounds(case)):
                times[key].append(timed(fn, cuda, clock))
    return times


def _captum_rounds(case: Case) -> int:
    """Captum runs many targets per round; one round is enough on the large model."""
    return case.repeats if case.model == "tiny-llama-chat" else 1


def _has_captum() -> bool:
    try:
        import captum  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------- parent side


def run_case(case: Case, args: argparse.Namespace) -> dict:
    """The case in a fresh process, so that memory starts clean and one case cannot disturb the next."""
    env = dict(
        os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    )
    command = [
        sys.executable,
        __file__,
        "--worker",
        case.name,
        "--repeats",
        str(case.repeats),
        "--captum-measured",
        str(case.captum_measured),
        "--targets",
        str(args.targets),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--rows",
        args.rows,
        "--clock",
        args.clock,
    ] + (["--threads", str(args.threads)] if args.threads else [])
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    """The Markdown table: medians and peaks, each as a ratio to (a) and, for gradscope's rows, to their floor."""
    lines = [
        "| model | params | seq | row | time | × (a) | × floor | peak memory | × (a) | × floor | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        model, seq = res["case"].split(":")
        s, m = res["seconds"], res["peak_mib"]
        lead = f"| {model} | {res['parameters'] / 1e6:.1f}M | {seq} |"
        for key in ROWS + tuple(k for k in BREAKDOWN if k in s):
            if key not in s:
                lines.append(f"{lead} {ROW_NAMES[key]} | {_not_run(key, res)} | | | | | | |")
                continue
            floor = FLOORS.get(key)
            ft = f"{s[key] / s[floor]:.2f}" if floor in s else ""
            fm = f"{m[key] / m[floor]:.2f}" if floor in m else ""
            at = f"{s[key] / s['a']:.2f}" if "a" in s else ""
            am = f"{m[key] / m['a']:.2f}" if "a" in m else ""
            lines.append(
                f"{lead} {ROW_NAMES[key]} | {_fmt_s(s[key])} | {at} | {ft} | {m[key]:.0f} MiB | {am} | {fm} | "
                f"{_runs(key, res)} |"
            )
    return "\n".join(lines)


def _runs(key: str, res: dict) -> str:
    runs = str(res["runs"][key]) + (" (the peak run)" if res.get("single") else "")
    if key == "d":
        runs += f" × {res['captum_measured']} targets" + (
            f", scaled to {res['targets']}" if res["captum_measured"] != res["targets"] else ""
        )
    return runs


def _not_run(key: str, res: dict) -> str:
    if key == "c" and not res["probes"]:
        return "n/a (probes not available in this version)"
    if key == "l" and not res.get("depth"):
        return "n/a (no depth='logits' in this version)"
    if key == "d" and not res["captum"]:
        return "n/a (captum not installed: pip install -e '.[bench]')"
    if key == "d" and not res["captum_measured"]:
        return "not run (one Captum target is a full forward + backward: minutes at this size)"
    return "not run (--rows)"


TARGETS = (
    # (what, numerator row, denominator row, bound, at most, only on the 100M model)
    ("core time <= 1.05x its floor", "b", "g", 1.05, True, False, "seconds"),
    ("core peak <= 1.08x its floor", "b", "g", 1.08, True, False, "peak_mib"),
    ("core peak <= 0.72x bare step", "b", "a", 0.72, True, True, "peak_mib"),
    ("logits time <= 1.10x its floor", "l", "m", 1.10, True, False, "seconds"),
    ("logits peak <= 1.10x its floor", "l", "m", 1.10, True, False, "peak_mib"),
    ("logits time <= 0.45x bare step", "l", "a", 0.45, True, True, "seconds"),
    ("logits peak <= 0.40x bare step", "l", "a", 0.40, True, True, "peak_mib"),
    ("probes time <= 1.2x bare step", "c", "a", 1.2, True, False, "seconds"),
    ("probes peak <= 0.80x bare step", "c", "a", 0.80, True, False, "peak_mib"),
    ("probes peak <= 1.05x core peak", "c", "b", 1.05, True, False, "peak_mib"),
    ("core >= 30x faster than Captum", "d", "b", 30, False, False, "seconds"),
)
"""The issue's targets; a target whose rows did not run is left out."""


def targets_report(results: list[dict]) -> str:
    """Each target of the issue, held or missed, per case."""
    lines = []
    for res in results:
        for what, top, bottom, bound, at_most, large_only, metric in TARGETS:
            values = res[metric]
            if top not in values or bottom not in values or (large_only and "100m" not in res["case"]):
                continue
            value = values[top] / values[bottom]
            ok = value <= bound if at_most else value >= bound
            lines.append(f"{res['case']:<22} {what:<32} {value:6.2f}  {'holds' if ok else 'MISSED'}")
    return "\n".join(lines)


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def machine(threads: int | None = None) -> str:
    import torch

    cpu = platform.processor() or "cpu"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    threads = threads or torch.get_num_threads()
    return f"{cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {threads} torch threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--cases", help="comma-separated MODEL:SEQ (default: all of " + ", ".join(c.name for c in CASES) + ")"
    )
    parser.add_argument("--repeats", type=int, help="timed repeats per row (default: per case)")
    parser.add_argument("--targets", type=int, default=32, help="target tokens Captum attributes (default 32)")
    parser.add_argument("--captum-measured", type=int, help="target tokens Captum really runs (default: per case)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--rows", default="".join(ROWS), help=f"which rows to run, e.g. 'ab' (default {''.join(ROWS)})")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time a forward alone, forward + activation-only backward, gradscope's run alone, "
        "and one Captum target",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="wall clock (default), or process CPU time (use with --threads 1 on a shared machine)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.breakdown and "f" not in args.rows:
        args.rows += "".join(BREAKDOWN)
    if args.worker:
        model, seq = args.worker.split(":")
        case = Case(model, int(seq), args.repeats, args.captum_measured)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(worker(case, args.targets, args.device, args.dtype, args.rows, args.clock)))
        return
    cases = _select(args)
    print(
        f"machine: {machine(args.threads)}; device {args.device}, dtype {args.dtype}, clock {args.clock}",
        file=sys.stderr,
    )
    results = []
    for case in cases:
        start = time.perf_counter()
        results.append(run_case(case, args))
        print(
            f"{case.name}: {time.perf_counter() - start:.0f} s, memory calibration: a 256 MiB tensor measured "
            f"{results[-1]['calibration_mib']:.0f} MiB",
            file=sys.stderr,
        )
        if args.json:  # after every case, so that a long run interrupted keeps what it measured
            args.json.write_text(
                json.dumps({"machine": machine(args.threads), "clock": args.clock, "results": results}, indent=2)
            )
    print(table(results))
    print()
    print(targets_report(results))
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine(args.threads), "clock": args.clock, "results": results}, indent=2)
        )


def _select(args: argparse.Namespace) -> list[Case]:
    cases = list(CASES)
    if args.cases:
        wanted = args.cases.split(",")
        cases = [c for c in CASES if c.name in wanted] or [Case(*_parse(w), 3, 32) for w in wanted]
    return [Case(c.model, c.seq, args.repeats or c.repeats, args.captum_measured or c.captum_measured) for c in cases]


def _parse(spec: str) -> tuple[str, int]:
    model, seq = spec.split(":")
    return model, int(seq)


if __name__ == "__main__":
    main()
