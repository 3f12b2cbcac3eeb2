"""What a user waits for before gradscope does anything: start-up, side by side with Python and torch.

Measures, in one run, each in a fresh process, the wall time of:

    python -c pass                    the interpreter alone
    python -c "import torch"          the floor of anything that runs a model
    gradscope --help                  start-up of the command line (no torch)
    gradscope check --help            the same for one command's help
    gradscope check MODEL BATCH       a whole check of the fixture model on a fixture batch (JSON output)
    floor of check                    import torch + transformers, load the same model and batch, one forward +
                                      backward: what any trainer pays before and for one step

and reports each as a ratio to ``import torch``, and check's overhead beyond the floor (seconds). Then, in one
process, the first and second ``gradscope.check_files`` on the same inputs (the second pays no imports).

The cases alternate, repeat by repeat, so that a load change on a shared machine falls on all of them; the median
is reported.

    python benchmarks/bench_startup.py               # 5 repeats, the table in Markdown
    python benchmarks/bench_startup.py --repeats 9
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "fixtures" / "models" / "tiny-llama-chat"
BATCH = ROOT / "fixtures" / "batches" / "llama_clean.safetensors"

FLOOR = f"""
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(MODEL)!r})
model.train()
batch = load_file({str(BATCH)!r})
out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
out.loss.backward()
"""

TWICE = f"""
import time, gradscope
inputs = gradscope.Inputs({str(MODEL)!r}, {str(BATCH)!r})
for _ in range(2):
    began = time.perf_counter()
    gradscope.check_files(inputs)
    print(time.perf_counter() - began)
"""

CASES = {
    "python -c pass": ["-c", "pass"],
    'python -c "import torch"': ["-c", "import torch"],
    "gradscope --help": ["-m", "gradscope", "--help"],
    "gradscope check --help": ["-m", "gradscope", "check", "--help"],
    "gradscope check (fixture model, json)": ["-m", "gradscope", "check", str(MODEL), str(BATCH), "--format", "json"],
    "floor of check: imports, load, one step": ["-c", FLOOR],
}


def environment() -> dict[str, str]:
    """This checkout first on the path, so that the copy measured is the one the benchmark sits in."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "COLUMNS": "100"}


def wall(args: list[str]) -> float:
    """Seconds from spawning a fresh interpreter to its exit."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, *args], env=environment(), cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode not in (0, 1):
        raise SystemExit(f"{args} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def measure(repeats: int) -> dict[str, float]:
    """Median wall seconds of every case, the cases alternating within each repeat."""
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(repeats):
        for name, args in CASES.items():
            times[name].append(wall(args))
    return {name: statistics.median(values) for name, values in times.items()}


def in_one_process() -> list[float]:
    """Seconds of the first and the second check_files in one process."""
    done = subprocess.run(
        [sys.executable, "-c", TWICE], env=environment(), cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [float(line) for line in done.stdout.split()]


def table(medians: dict[str, float], repeats: int) -> str:
    torch_s = medians['python -c "import torch"']
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; "
        f"Python {platform.python_version()}; median of {repeats} fresh processes per row.",
        "",
        "| command | wall (s) | × `import torch` |",
        "|---|---:|---:|",
    ]
    lines += [f"| `{name}` | {seconds:.3f} | {seconds / torch_s:.2f} |" for name, seconds in medians.items()]
    check_s = medians["gradscope check (fixture model, json)"]
    floor_s = medians["floor of check: imports, load, one step"]
    lines += [
        "",
        f"check overhead beyond imports + model load + one step: {check_s - floor_s:.3f} s "
        f"({check_s:.3f} s against {floor_s:.3f} s)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    medians = measure(repeats)
    first, second = in_one_process()
    print(table(medians, repeats))
    print(f"in one process: first check_files {first:.3f} s, second {second:.3f} s")


if __name__ == "__main__":
    main()
