"""What watching the first optimizer step costs: watched vs unwatched training steps, side by side in one run.

For each trainer (TRL's SFTTrainer on its default fused-LM-head path; a plain transformers Trainer, whose loss reads
the logits; a plain PyTorch loop watched by StepWatcher), a fresh model with the same seed trains --steps steps with
and without GradscopeCallback (StepWatcher for the loop), the order alternating over --repeats rounds (after one
untimed round). A step is timed from on_step_begin to on_step_end (forward, backward, the verdict in
on_pre_optimizer_step, the optimizer step), in wall-clock time and in this process's CPU time. Reported: the median
first step and the median later step (steps 2..N) of each mode, and their ratios, each the median over rounds of the
ratio within a round.

    python benchmarks/bench_watch.py                        # default: Llama, hidden 256, 4 layers, vocab 32000
    python benchmarks/bench_watch.py --hidden 512 --layers 8 --length 256 --repeats 5
"""

from __future__ import annotations

import argparse
import gc
import logging
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradscope.integrations import GradscopeCallback, StepWatcher
from gradscope.model.load import load_tokenizer

TOKENIZER = Path(__file__).resolve().parent.parent / "fixtures/models/tiny-llama-chat"
WORDS = [
    "the",
    "sky",
    "is",
    "blue",
    "and",
    "the",
    "sea",
    "is",
    "green",
    "while",
    "a",
    "cat",
    "sat",
    "on",
    "the",
    "mat",
    "near",
    "seven",
    "red",
    "books",
]


CLOCKS = {
    "wall": time.perf_counter,
    "cpu": time.process_time,
    "faults": lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt,
}
"""Wall-clock time; this process's CPU time (on a machine shared with other jobs it leaves out the time the process
waited for a core; with --threads 1 and no data-loader workers it is one thread's time); and the minor page faults
(memory the step touched for the first time: on a CPU each costs the kernel a zeroed page, so a step whose heap
cannot reuse freed memory is slower for reasons that are no part of the code it runs)."""


class StepTimer:
    """A TrainerCallback timing each optimizer step on every clock."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        timer = self

        class _Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer.start = {name: clock() for name, clock in CLOCKS.items()}

            def on_step_end(self, args, state, control, **kwargs):
                timer.steps.append({name: clock() - timer.start[name] for name, clock in CLOCKS.items()})

        self.callback, self.steps, self.start = _Timer(), [], {}


def rows(n: int, length: int) -> list[dict]:
    rng = random.Random(0)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return [{"prompt": text(length // 4) + "\nAnswer:", "completion": " " + text(length // 8)} for _ in range(n)]


def model(options):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=options.vocab,
        hidden_size=options.hidden,
        intermediate_size=options.hidden * 3,
        num_hidden_layers=options.layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        eos_token_id=2,
        pad_token_id=3,
    )
    return LlamaForCausalLM(config)


def trainer_settings(options, out):
    """What both trainers are given: the same steps and batches, on the CPU, nothing saved or logged."""
    return dict(
        output_dir=out,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        max_steps=options.steps,
        per_device_train_batch_size=options.batch,
        disable_tqdm=True,
    )


def sft_trainer(options, data, callbacks, out):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**trainer_settings(options, out))
    return SFTTrainer(
        model=model(options),
        args=args,
        train_dataset=Dataset.from_list(data),
        processing_class=load_tokenizer(TOKENIZER),
        callbacks=callbacks,
    )


def tokenize(data):
    """Rows tokenized with the prompt masked in the labels, and a right-padding collator."""
    tokenizer = load_tokenizer(TOKENIZER)
    tokenized = []
    for row in data:
        prompt = tokenizer(row["prompt"])["input_ids"]
        full = tokenizer(row["prompt"] + row["completion"] + tokenizer.eos_token)["input_ids"]
        tokenized.append({"input_ids": full, "labels": [-100] * len(prompt) + full[len(prompt) :]})

    def collate(batch):
        width = max(len(r["input_ids"]) for r in batch)

        def pad(key, fill):
            return torch.tensor([r[key] + [fill] * (width - len(r[key])) for r in batch])

        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch])
        return {"input_ids": pad("input_ids", 3), "labels": pad("labels", -100), "attention_mask": mask}

    return tokenized, collate


def plain_trainer(options, data, callbacks, out):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    tokenized, collate = tokenize(data)
    args = TrainingArguments(**trainer_settings(options, out))
    return Trainer(
        model=model(options),
        args=args,
        train_dataset=Dataset.from_list(tokenized),
        data_collator=collate,
        callbacks=callbacks,
    )


def plain_loop(options, data, callbacks, out):
    """A plain PyTorch loop (no Trainer: AdamW at the Trainer's default learning rate, the model's own loss) over the
    plain Trainer's batches; watched by StepWatcher (its three lines) when ``callbacks`` holds a GradscopeCallback,
    timed by the StepTimer's callback like the trainers."""
    tokenized, collate = tokenize(data)
    timer, watched = callbacks[0], any(isinstance(c, GradscopeCallback) for c in callbacks)

    class Loop:
        def train(self) -> None:
            net = model(options)
            net.train()
            optimizer = torch.optim.AdamW(net.parameters(), lr=5e-5)
            watcher = StepWatcher(net, fail_on=None) if watched else None
            for step in range(options.steps):
                batch = collate(tokenized[step * options.batch : (step + 1) * options.batch])
                timer.on_step_begin(None, None, None)
                if watcher is not None:
                    with watcher.micro_batch({"completion_mask": batch["labels"] != -100}):
                        loss = net(**batch).loss
                else:
                    loss = net(**batch).loss
                loss.backward()
                if watcher is not None:
                    watcher.check()
                optimizer.step()
                optimizer.zero_grad()
                timer.on_step_end(None, None, None)

    return Loop()


def measure(make, options, data) -> dict[tuple[str, str, str], list[float]]:
    """(clock, mode, first/later) -> step times over the rounds, the order alternating; one untimed round first
    (the process's first training pays one-off costs that are no part of either mode). Each run starts after a full
    garbage collection (unless --no-collect): a finished Trainer with reference cycles (SFTTrainer has some of its
    own) is freed only by the cyclic collector, and whether its memory is still held, free in the heap or given
    back to the system when the next run starts decides how many of that run's allocations fault in fresh pages,
    whichever mode it is."""
    times: dict[tuple[str, str, str], list[float]] = {}
    for round_ in range(-1, options.repeats):
        for mode in ("unwatched", "watched") if round_ % 2 == 0 else ("watched", "unwatched"):
            if options.collect:
                gc.collect()  # the previous run's trainer, if reference cycles keep it, freed before this one starts
            timer = StepTimer()
            callbacks = [timer.callback] + ([GradscopeCallback(write_report=False)] if mode == "watched" else [])
            with tempfile.TemporaryDirectory() as out:
                make(options, data, callbacks, out).train()
            if round_ < 0:
                continue
            for clock in CLOCKS:
                times.setdefault((clock, mode, "first"), []).append(timer.steps[0][clock])
                times.setdefault((clock, mode, "later"), []).append(
                    statistics.median(s[clock] for s in timer.steps[1:])
                )
    return times


PROFILED = {
    "forward hooks": ("integrations/observe.py", ("_begin", "_end", "_embedding", "_body", "_head")),
    "backward reads": ("integrations/observe.py", ("run",)),
    "verdict": ("integrations/callback.py", ("on_pre_optimizer_step",)),
}
"""gradscope's own parts of a watched step, as cProfile names them (file, functions): the hooks on the forward, the
gradient hooks of the backward (``run`` wraps each read), and the verdict before the optimizer step."""


def profile_first_step(make, options, data) -> dict[str, float]:
    """Seconds of one watched first step spent in each of gradscope's parts, and in the whole step (cProfile, whose
    own overhead inflates Python-heavy code: read the parts as shares of the profiled step)."""
    import cProfile
    import pstats

    from transformers import TrainerCallback

    profiler = cProfile.Profile()

    class _Profile(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 0:
                profiler.enable()

        def on_step_end(self, args, state, control, **kwargs):
            profiler.disable()

    with tempfile.TemporaryDirectory() as out:
        make(options, data, [_Profile(), GradscopeCallback(write_report=False)], out).train()
    stats = pstats.Stats(profiler).stats  # (file, line, function) -> (calls, calls, own time, cumulative, callers)
    parts = {
        name: sum(v[3] for (path, _, fn), v in stats.items() if path.endswith(where) and fn in functions)
        for name, (where, functions) in PROFILED.items()
    }
    parts["step"] = sum(v[2] for v in stats.values())
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--length", type=int, default=256, help="about this many tokens per row")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--profile", action="store_true", help="also profile one watched first step per trainer")
    parser.add_argument(
        "--no-collect",
        dest="collect",
        action="store_false",
        help="do not collect garbage before each run (the previous run's memory then skews the next)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["sft", "trainer", "loop"],
        default=["sft", "trainer", "loop"],
        help="which runs to measure (default: all three)",
    )
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    logging.disable(logging.WARNING)
    data = rows(options.batch * options.steps, options.length)
    print(
        f"Llama hidden {options.hidden}, {options.layers} layers, vocab {options.vocab}, batch {options.batch} x "
        f"~{options.length} tokens, {options.steps} steps, {options.repeats} rounds, {torch.get_num_threads()} threads"
    )
    print("| trainer | clock | unwatched first | watched first | ratio | unwatched later | watched later | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    trainers = {
        "sft": ("SFTTrainer (fused LM head)", sft_trainer),
        "trainer": ("Trainer (logits)", plain_trainer),
        "loop": ("plain loop, StepWatcher (logits)", plain_loop),
    }
    for name, make in (trainers[key] for key in options.only):
        times = measure(make, options, data)
        for clock in ("wall", "cpu"):
            t = {
                (m, s): statistics.median(times[(clock, m, s)])
                for m in ("unwatched", "watched")
                for s in ("first", "later")
            }
            ratio = {
                s: paired_ratio(times[(clock, "watched", s)], times[(clock, "unwatched", s)])
                for s in ("first", "later")
            }
            print(
                f"| {name} | {clock} | {t['unwatched', 'first']:.3f} s | {t['watched', 'first']:.3f} s | "
                f"{ratio['first']:.2f}x | {t['unwatched', 'later']:.3f} s | {t['watched', 'later']:.3f} s | "
                f"{ratio['later']:.2f}x |"
            )
        faults = {
            (m, s): statistics.median(times[("faults", m, s)])
            for m in ("unwatched", "watched")
            for s in ("first", "later")
        }
        print(
            f"  minor page faults of {name} (medians): first step {faults['unwatched', 'first']:,.0f} unwatched, "
            f"{faults['watched', 'first']:,.0f} watched; later steps {faults['unwatched', 'later']:,.0f} unwatched, "
            f"{faults['watched', 'later']:,.0f} watched"
        )
        if options.profile and make is not plain_loop:
            parts = profile_first_step(make, options, data)
            shares = ", ".join(
                f"{part} {parts[part] * 1000:.0f} ms ({parts[part] / parts['step']:.1%})" for part in PROFILED
            )
            print(f"  profiled watched first step of {name}: {parts['step']:.3f} s; gradscope: {shares}")


def paired_ratio(watched: list[float], unwatched: list[float]) -> float:
    """The median over rounds of watched / unwatched within a round: the two runs of a round are back to back, so
    load that drifts over the benchmark cancels out of each ratio."""
    return statistics.median(w / u for w, u in zip(watched, unwatched, strict=True))


if __name__ == "__main__":
    main()
