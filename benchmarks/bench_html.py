"""What the HTML report costs: gradscope's render time and the file size for a 64 x 2,048-token batch.

The Report is built directly (no model runs): chat-like token texts, prompt / completion / padding roles, per-token
losses and gradient norms, and a layers x positions norm matrix per sample; every other sample leaks its prompt
(a prompt_leak finding over its prompt positions), so a third of the tokens are flagged. Times are the median of
--repeats calls of ``to_html`` in this process (the first call is a warm-up).

    python benchmarks/bench_html.py                          # 64 x 2048 tokens, 32 layers (a 7B-class model)
    python benchmarks/bench_html.py --layers 2 --out /tmp/big.html
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gradscope.render.html import to_html  # noqa: E402
from gradscope.report import Finding, Report, SampleReport, TokenReport  # noqa: E402

WORDS = [
    " the",
    " model",
    " learns",
    " to",
    " answer",
    " a",
    " question",
    ",",
    ".",
    " and",
    " it",
    " is",
    "\n",
    " capital",
    " of",
    " Kenya",
    " Nairobi",
    " sky",
    " blue",
    " token",
    " mask",
    " label",
    " loss",
    "ing",
    "s",
]
SPECIAL = ["<|im_start|>", "system", "\n", "<|im_end|>", "\n", "<|im_start|>", "user", "\n"]


def synthetic_sample(
    index: int, tokens: int, layers: int, leak: bool, rng: random.Random
) -> tuple[SampleReport, Finding | None]:
    """One chat-like row: a prompt of about a third of the row, a completion closed by <|im_end|>, then padding."""
    prompt_end, real_end = tokens // 3, tokens - tokens // 16
    texts = SPECIAL + [rng.choice(WORDS) for _ in range(tokens - len(SPECIAL))]
    texts[prompt_end - 3 : prompt_end] = ["<|im_end|>", "<|im_start|>", "assistant"]
    texts[real_end - 1] = "<|im_end|>"
    rows = []
    for t in range(tokens):
        role = "prompt" if t < prompt_end else "completion" if t < real_end else "pad"
        trained = t > 0 and (role == "completion" or (leak and role == "prompt"))
        loss = rng.uniform(0.5, 9.0) if t > 0 else None
        rows.append(
            TokenReport(
                t,
                rng.randrange(32000),
                texts[t] if role != "pad" else "<pad>",
                role,
                rng.randrange(32000) if trained else -100,
                trained,
                rng.randrange(32000) if t > 0 else None,
                loss,
                (1 / tokens if trained else 0.0) if t > 0 else None,
                rng.lognormvariate(-6, 1.5) if trained else 0.0,
                rng.lognormvariate(-4, 1.0) if role != "pad" else 0.0,
            )
        )
    norms = [
        [rng.lognormvariate(-3 - 2 * layer / max(1, layers), 1.0) if t < real_end else 0.0 for t in range(tokens)]
        for layer in range(layers)
    ]
    finding = None
    if leak:
        leaked = list(range(1, prompt_end))
        finding = Finding(
            "prompt_leak",
            "error",
            index,
            leaked,
            f"prompt tokens 1–{prompt_end - 1} are trained: the labels copy input_ids",
        )
    return SampleReport(index, rows, norms), finding


def synthetic_report(samples: int = 64, tokens: int = 2048, layers: int = 32, seed: int = 0) -> Report:
    """A Report of ``samples`` x ``tokens`` tokens; every other sample leaks its prompt."""
    rng = random.Random(seed)
    built = [synthetic_sample(i, tokens, layers, leak=i % 2 == 1, rng=rng) for i in range(samples)]
    model = {
        "name_or_path": "synthetic",
        "architecture": "LlamaForCausalLM",
        "num_layers": layers,
        "dtype": "float32",
        "device": "cpu",
        "loss": "outputs.loss",
    }
    return Report(model=model, samples=[s for s, _ in built], findings=[f for _, f in built if f], losses=[2.5])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="Also write the page here.")
    args = parser.parse_args()
    report = synthetic_report(args.samples, args.tokens, args.layers)
    page = to_html(report)  # warm-up
    times, cpu = [], []
    for _ in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        page = to_html(report)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    size = len(page.encode("utf-8"))
    print(
        f"{args.samples} x {args.tokens} tokens, {args.layers} layers: render {statistics.median(times):.3f} s wall, "
        f"{statistics.median(cpu):.3f} s CPU (medians of {args.repeats}; wall min "
        f"{min(times):.3f}, max {max(times):.3f}), "
        f"file {size / 1e6:.1f} MB ({size} bytes)"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f}")
    if args.out is not None:
        args.out.write_text(page, encoding="utf-8")


if __name__ == "__main__":
    main()
