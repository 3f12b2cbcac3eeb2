"""Nothing runs that was not asked for: no remote code without --trust-remote-code, never a prompt, no pickle ever
opened (an index naming one included), and a chat template that never ends stopped with a clear error."""

from __future__ import annotations

import json
import pickle
import shutil
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from gradscope.cli import app

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
LLAMA = FIXTURES / "models/tiny-llama-chat"
CLEAN = FIXTURES / "batches/llama_clean.safetensors"
CHAT = FIXTURES / "raw/chat.jsonl"


def invoke(*args: object, stdin: str | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], input=stdin)


def assert_bad_input(result, *words: str) -> None:
    __tracebackhide__ = True
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def _copy(tmp_path: Path) -> Path:
    path = tmp_path / "model"
    shutil.copytree(LLAMA, path)
    return path


_MARKER_CODE = "from pathlib import Path\nPath({marker!r}).write_text('ran')\n"


def _remote_tokenizer(path: Path, marker: Path) -> None:
    (path / "tokenization_evil.py").write_text(
        _MARKER_CODE.format(marker=str(marker))
        + "from transformers import PreTrainedTokenizerFast\nclass EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]}
    config["tokenizer_class"] = "EvilTokenizer"
    (path / "tokenizer_config.json").write_text(json.dumps(config))


def _remote_model(path: Path, marker: Path) -> None:
    (path / "modeling_evil.py").write_text(
        _MARKER_CODE.format(marker=str(marker))
        + "from transformers import LlamaForCausalLM\nclass EvilForCausalLM(LlamaForCausalLM):\n    pass\n"
    )
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("where", ["tokenizer", "model"])
@pytest.mark.parametrize("command", ["check", "roles", "scan"])
def test_remote_code_never_runs_and_nothing_prompts(tmp_path, where, command):
    model, marker = _copy(tmp_path), tmp_path / "marker.txt"
    (_remote_tokenizer if where == "tokenizer" else _remote_model)(model, marker)
    if command == "check":
        args = ("check", model, CHAT, "--format", "json")
    elif command == "roles":
        args = ("roles", model, CHAT, "--format", "json")
    else:
        args = ("scan", CHAT, "--tokenizer", model, "--format", "json")
    result = invoke(*args, stdin="y\ny\ny\n")  # what a careless user (or a pipe) answers to a prompt
    assert not marker.exists(), "code from the model directory ran"
    assert "[y/N]" not in result.output and "trust" not in result.stdout
    if where == "tokenizer":
        assert_bad_input(result, "--trust-remote-code")
        assert result.stdout == ""
    else:  # a standard model type: transformers builds its own class, never the directory's (nothing ran)
        assert result.exit_code in (0, 1), result.output


def test_trust_remote_code_reaches_the_tokenizer(tmp_path):
    model, marker = _copy(tmp_path), tmp_path / "marker.txt"
    _remote_tokenizer(model, marker)
    result = invoke("check", model, CLEAN, "--format", "json", "--trust-remote-code", "--probes", "none")
    assert marker.exists(), "the tokenizer's code was allowed but not run"
    assert result.exit_code == 0, result.output


class _Marker:
    """Unpickling this writes the marker file (what a malicious pickle would do, harmlessly)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "unpickled"))


def test_a_weight_index_pointing_at_a_pickle_is_never_opened(tmp_path, monkeypatch):
    import torch

    model, marker = _copy(tmp_path), tmp_path / "marker.txt"
    weights = load_file(str(model / "model.safetensors"))
    (model / "model.safetensors").unlink()
    save_file(weights, str(model / "model-00001-of-00001.safetensors"))
    with open(model / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weights": _Marker(marker)}, f)
    index = {"metadata": {}, "weight_map": {name: "pytorch_model.bin" for name in weights}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    opened = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a) or {})
    monkeypatch.setattr(pickle, "load", lambda *a, **k: opened.append(a) or {})
    result = invoke("check", model, CLEAN, "--format", "json")
    assert opened == [] and not marker.exists()
    assert_bad_input(result, "model.safetensors.index.json", "pytorch_model.bin", "safetensors")
    assert result.stdout == ""


@pytest.mark.parametrize("target", ["/etc/passwd", "../model.safetensors", "missing.safetensors"])
def test_a_weight_index_naming_files_outside_or_absent_is_bad_input(tmp_path, target):
    model = _copy(tmp_path)
    weights = load_file(str(model / "model.safetensors"))
    index = {"weight_map": {name: target for name in weights}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_bad_input(invoke("check", model, CLEAN, "--format", "json"), "model.safetensors.index.json", target)


def test_an_index_that_is_not_json_is_bad_input(tmp_path):
    model = _copy(tmp_path)
    (model / "model.safetensors.index.json").write_text("{")
    assert_bad_input(invoke("check", model, CLEAN, "--format", "json"), "model.safetensors.index.json")


_ENDLESS = (
    "{% for i in range(100000) %}{% for j in range(100000) %}{% for k in range(100000) %}"
    "{% endfor %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}"
)


@pytest.mark.parametrize("command", ["check", "roles", "scan"])
def test_an_endless_chat_template_is_stopped_with_a_clear_error(tmp_path, monkeypatch, command):
    from gradscope.data import deadline

    monkeypatch.setattr(deadline, "TEMPLATE_SECONDS", 1.0)
    model = _copy(tmp_path)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = _ENDLESS
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    args = {
        "check": ("check", model, CHAT),
        "roles": ("roles", model, CHAT),
        "scan": ("scan", CHAT, "--tokenizer", model),
    }
    start = time.monotonic()
    result = invoke(*args[command], "--format", "json")
    assert time.monotonic() - start < 30
    assert_bad_input(result, "chat template", "1")
    assert result.stdout == ""


def test_a_template_endless_only_as_trl_renders_it_is_stopped_with_a_clear_error(tmp_path, monkeypatch):
    # TRL renders each row with the row's chat_template_kwargs, which gradscope's own renderings do not pass: the
    # template below ends for gradscope and never for TRL, so only the bound on TRL's renderings can stop it.
    pytest.importorskip("trl")
    from gradscope.data import deadline

    monkeypatch.setattr(deadline, "TEMPLATE_SECONDS", 1.0)
    model = _copy(tmp_path)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% if endless %}" + _ENDLESS + "{% endif %}" + config["chat_template"]
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    rows = [json.loads(line) for line in CHAT.read_text().splitlines()]
    rows = [{**row, "chat_template_kwargs": {"endless": i == 1}} for i, row in enumerate(rows)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = invoke("check", model, data, "--pipeline", "trl", "--format", "json")
    assert_bad_input(result, "rows.jsonl", "row 1", "chat template did not finish", "within 1 s", "TRL")
    assert result.stdout == ""
