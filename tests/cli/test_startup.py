"""Start-up: ``--help``, ``--version``, usage errors and ``import gradscope`` load neither torch nor transformers,
read from the module list of a fresh interpreter (``python -X importtime``); running a command still loads them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "numpy", "datasets", "safetensors", "tokenizers")


def imported(*code: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The top-level packages a fresh ``python -X importtime ...`` imports, and the finished process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    names = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    return names - {"package"}, done  # "package" is the header row's last column


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["check", "--help"],
        ["scan", "--help"],
        ["--version"],
        ["check", "model", "batch.safetensors", "--dtype", "float8"],  # a usage error
        ["check"],  # a missing argument
    ],
)
def test_the_command_line_answers_without_torch(args: list[str]) -> None:
    names, done = imported("-m", "gradscope", *args)
    assert "gradscope" in names and "typer" in names, done.stderr[-2000:]  # the list was read
    assert sorted(names & set(HEAVY)) == []
    assert "Traceback" not in done.stderr


def test_import_gradscope_is_lazy_and_its_names_still_resolve() -> None:
    code = (
        "import sys, gradscope; light = 'torch' not in sys.modules; "
        "import gradscope.scan.roles; print(light, gradscope.check.__module__, gradscope.scan.__module__, "
        "gradscope.Report.__name__, sorted(set(gradscope.__all__) - set(dir(gradscope))))"
    )
    names, done = imported("-c", code)
    assert done.stdout.split() == ["True", "gradscope.verbs.check", "gradscope.scan.dataset", "Report", "[]"]
    assert "torch" in names  # the names did resolve, through the modules that need torch


def test_a_command_that_runs_a_model_still_loads_torch() -> None:
    """The module list is the real one: the same reader sees torch once a command needs it."""
    model, batch = ROOT / "fixtures/models/tiny-llama-chat", ROOT / "fixtures/batches/llama_clean.safetensors"
    names, done = imported("-m", "gradscope", "check", str(model), str(batch), "--format", "json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"torch", "transformers"} <= names


def test_a_clean_check_writes_nothing_on_stderr() -> None:
    """stderr is for gradscope's diagnostics: a clean check writes nothing there, though transformers imports the
    optional packages it finds installed (torchao, with the torchtune extra, logs at import time)."""
    model, batch = ROOT / "fixtures/models/tiny-llama-chat", ROOT / "fixtures/batches/llama_clean.safetensors"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    args = [sys.executable, "-m", "gradscope", "check", str(model), str(batch), "--format", "json", "--depth", "logits"]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, "")


def test_version_prints_the_package_version() -> None:
    from gradscope import __version__

    _, done = imported("-m", "gradscope", "--version")
    assert (done.returncode, done.stdout) == (0, f"gradscope {__version__}\n")
