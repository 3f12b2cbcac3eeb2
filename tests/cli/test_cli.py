"""The CLI: exit codes, parsed JSON, and one clear Error line for every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from safetensors.torch import save_file
from typer.testing import CliRunner

from gradscope.cli import app, exit_code
from gradscope.report.check import Report
from gradscope.report.finding import Finding

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
# rich sizes the text report from COLUMNS: every run gets a 100-column terminal, whatever terminal pytest runs in
# (run_wide and the --help test ask for wider ones).
runner = CliRunner(env={"COLUMNS": "100"})
LLAMA = str(FIXTURES / "models/tiny-llama-chat")
GPT2 = str(FIXTURES / "models/tiny-gpt2")
BATCHES = FIXTURES / "batches"
RAW = FIXTURES / "raw"


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def run_json(*args: str):
    result = run("check", *args, "--format", "json")
    return result, json.loads(result.stdout)


def test_clean_batch_exits_0_with_json_on_stdout():
    result, data = run_json(LLAMA, BATCHES / "llama_clean.safetensors")
    assert result.exit_code == 0, result.output
    assert data["schema_version"] == 1 and data["findings"] == [] and data["summary"]["ok"] is True


def test_leak_exits_1_with_findings():
    result, data = run_json(LLAMA, BATCHES / "llama_prompt_leak.safetensors")
    assert result.exit_code == 1
    assert [(f["check"], f["sample"]) for f in data["findings"]] == [("prompt_leak", i) for i in range(3)]


def test_jsonl_with_batch_size_and_samples():
    result, data = run_json(LLAMA, BATCHES / "llama_clean.jsonl", "--batch-size", "2", "--samples", "3")
    assert result.exit_code == 0
    assert [s["index"] for s in data["samples"]] == [0, 1, 2]
    assert len(data["summary"]["loss"]) == 2  # rows 0-1, then row 2


def test_output_file_matches_stdout(tmp_path):
    out = tmp_path / "report.json"
    result, data = run_json(GPT2, BATCHES / "gpt2_eos_untrained_lm_collator.safetensors", "--output", out)
    assert result.exit_code == 1
    assert json.loads(out.read_text()) == data
    assert {f["check"] for f in data["findings"]} == {"eos_untrained", "roles_unknown"}  # GPT-2: no chat template


def test_text_report_exit_codes():
    assert run("check", GPT2, BATCHES / "gpt2_clean.safetensors").exit_code == 0
    result = run("check", GPT2, BATCHES / "gpt2_prompt_leak.safetensors")
    assert result.exit_code == 1
    assert "prompt_leak" in result.stdout


def test_custom_loss_file(tmp_path):
    loss = tmp_path / "losses.py"
    loss.write_text(
        "import torch.nn.functional as F\n"
        "def token_mean(logits, labels):\n"
        "    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)\n"
    )
    result, data = run_json(LLAMA, BATCHES / "llama_clean.safetensors", "--loss", f"{loss}:token_mean")
    assert result.exit_code == 0, result.output
    assert data["model"]["loss"] == "token_mean"


def test_inspect_row():
    result = run("inspect", LLAMA, BATCHES / "llama_pad_leak.safetensors", "--row", "1")
    assert result.exit_code == 1
    assert "pad_leak" in result.stdout
    assert run("inspect", LLAMA, BATCHES / "llama_clean.safetensors", "--row", "2").exit_code == 0


def test_exit_code_strict_counts_warnings():
    warning = Finding("some_warning", "warning", 0, [], "m")
    report = Report(model={}, findings=[warning])
    assert exit_code(report, strict=False) == 0
    assert exit_code(report, strict=True) == 1
    assert exit_code(Report(model={}), strict=True) == 0


def _tensors(path: Path, **tensors):
    save_file({k: torch.tensor(v) for k, v in tensors.items()}, str(path))
    return path


def _bad_inputs(tmp: Path) -> dict[str, tuple[list, str]]:
    """Each bad input: the arguments, and a piece the one Error line must contain."""
    not_model = tmp / "not_model"
    not_model.mkdir()
    broken_config = tmp / "broken_config"
    broken_config.mkdir()
    (broken_config / "config.json").write_text("{not json")
    (broken_config / "model.safetensors").write_bytes(b"\0" * 16)
    corrupt = tmp / "corrupt.safetensors"
    corrupt.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00garbage")
    bad_json = tmp / "bad.jsonl"
    bad_json.write_text('{"input_ids": [1, 2, 3]}\n{"input_ids": [1, 2,\n')
    empty = tmp / "empty.jsonl"
    empty.write_text("\n")
    good = BATCHES / "llama_clean.safetensors"
    return {
        "missing model": ([tmp / "nope", good], "no such model directory"),
        "not a model": ([not_model, good], "no config.json"),
        "unreadable model": ([broken_config, good], "broken_config"),
        "model is a file": ([good, good], "not a directory"),
        "missing data": ([LLAMA, tmp / "nope.safetensors"], "no such data file"),
        "corrupt safetensors": ([LLAMA, corrupt], "cannot read safetensors"),
        "invalid json line": ([LLAMA, bad_json], "line 2: invalid JSON"),
        "empty data": ([LLAMA, empty], "no rows"),
        "id outside vocab": (
            [LLAMA, _tensors(tmp / "vocab.safetensors", input_ids=[[1, 2, 99999]])],
            "row 0: position 2",
        ),
        "labels shape": (
            [LLAMA, _tensors(tmp / "labels.safetensors", input_ids=[[1, 2, 3]], labels=[[1, 2]])],
            "'labels' has shape",
        ),
        "role shape": (
            [LLAMA, _tensors(tmp / "role.safetensors", input_ids=[[1, 2, 3]], completion_mask=[[1, 1, 1, 1]])],
            "'completion_mask' has shape",
        ),
        "id outside vocab, later batch": (
            [
                LLAMA,
                _jsonl(tmp / "later.jsonl", '{"input_ids": [1, 2]}\n{"input_ids": [1, 99999]}'),
                "--batch-size",
                "1",
            ],
            "row 1: position 1",
        ),
        "jsonl length": (
            [LLAMA, _jsonl(tmp / "len.jsonl", '{"input_ids": [1, 2], "labels": [1]}')],
            "line 1: 'labels' has 1",
        ),
        "unknown format": ([LLAMA, _jsonl(tmp / "data.csv", "a,b")], "unknown data format"),
        "loss file missing": ([LLAMA, good, "--loss", tmp / "nope.py:fn"], "nope.py: no such file"),
        "loss function missing": ([LLAMA, good, "--loss", f"{_jsonl(tmp / 'l.py', 'x = 1')}:fn"], "no function 'fn'"),
        "loss module missing": ([LLAMA, good, "--loss", "no_such_module_xyz:fn"], "cannot import module"),
        "loss spec malformed": ([LLAMA, good, "--loss", "justaname"], "is not FILE.py:FN"),
        "template not in tokens": (
            [GPT2, RAW / "text.jsonl", "--response-template", "swer:"],
            "row 0: the response template 'swer:' is in the text but not in its tokens",
        ),
        "plain text, no template": ([GPT2, RAW / "text.jsonl"], "row 0: the row is plain text"),
        "raw rows, no tokenizer": ([_no_tokenizer(tmp), RAW / "chat.jsonl"], "raw rows need a tokenizer"),
        "collate and trl": ([LLAMA, RAW / "chat.jsonl", "--pipeline", "trl", "--collate", "x.py:f"], "pick one"),
        "trl config key": (
            [LLAMA, RAW / "chat.jsonl", "--pipeline", "trl", "--trl-config", _jsonl(tmp / "c.json", '{"nope": 1}')],
            "SFTConfig rejects",
        ),
    }


def _no_tokenizer(tmp: Path) -> Path:
    path = tmp / "no_tokenizer"
    path.mkdir()
    for name in ("config.json", "model.safetensors"):
        (path / name).write_bytes((Path(LLAMA) / name).read_bytes())
    return path


def _jsonl(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    return path


@pytest.mark.parametrize(
    "case",
    [
        "missing model",
        "not a model",
        "unreadable model",
        "model is a file",
        "missing data",
        "corrupt safetensors",
        "invalid json line",
        "empty data",
        "id outside vocab",
        "id outside vocab, later batch",
        "labels shape",
        "role shape",
        "jsonl length",
        "unknown format",
        "loss file missing",
        "loss function missing",
        "loss module missing",
        "loss spec malformed",
        "template not in tokens",
        "plain text, no template",
        "raw rows, no tokenizer",
        "collate and trl",
        "trl config key",
    ],
)
def test_bad_input_exits_2_with_one_error_line(case, tmp_path):
    args, expected = _bad_inputs(tmp_path)[case]
    result = run("check", *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_inspect_row_out_of_range_exits_2():
    result = run("inspect", LLAMA, BATCHES / "llama_clean.safetensors", "--row", "7")
    assert result.exit_code == 2
    assert "there is no row 7" in result.stderr


def test_every_command_has_help_and_is_documented():
    """The README names every command; docs/cli.md, the command reference, documents every option."""
    readme = (FIXTURES.parent / "README.md").read_text()
    reference = (FIXTURES.parent / "docs/cli.md").read_text()
    commands = typer.main.get_command(app).commands
    for command in commands:
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250"})  # wide: no option name cut short
        assert result.exit_code == 0
        assert commands[command].help and all(param.help for param in commands[command].params)
        assert f"gradscope {command}" in readme
        assert f"## gradscope {command}" in reference
        section = reference.split(f"## gradscope {command}\n", 1)[1].split("\n## ", 1)[0]
        options = [
            o for param in commands[command].params for o in (*param.opts, *param.secondary_opts) if o.startswith("--")
        ]  # from the command itself, not its help text at some terminal width
        assert options or not commands[command].params
        for option in options:
            assert option in section, f"{command} {option} is not documented in docs/cli.md"


def test_raw_chat_and_prompt_completion_files_check_clean_with_reference_masking():
    result, data = run_json(LLAMA, RAW / "chat.jsonl", "--batch-size", "3")
    assert result.exit_code == 0, result.output
    assert data["data"] == {
        "source": str(RAW / "chat.jsonl"),
        "rows": 3,
        "format": "chat",
        "pipeline": "reference",
        "train_on": "all-assistant",
        "max_length": None,
    }
    result, data = run_json(GPT2, RAW / "prompt_completion.jsonl")
    assert result.exit_code == 0 and data["findings"] == []
    text = run("check", LLAMA, RAW / "chat.jsonl", "--show", "1")
    assert "labels from gradscope's reference masking" in " ".join(text.stdout.split())


def test_max_length_warns_and_strict_fails_on_it():
    result, data = run_json(
        LLAMA, RAW / "chat.jsonl", "--samples", "2", "--max-length", "20", "--truncation-mode", "keep_end"
    )
    assert result.exit_code == 0
    assert [(f["check"], f["severity"], f["sample"]) for f in data["findings"]] == [
        ("completion_truncated", "warning", 0)
    ]
    assert (
        run(
            "check",
            LLAMA,
            RAW / "chat.jsonl",
            "--samples",
            "2",
            "--max-length",
            "20",
            "--truncation-mode",
            "keep_end",
            "--strict",
        ).exit_code
        == 1
    )


def test_pipeline_trl_flags_and_config_file(tmp_path):
    result, data = run_json(LLAMA, RAW / "chat.jsonl", "--pipeline", "trl", "--batch-size", "3")
    assert result.exit_code == 1 and {f["check"] for f in data["findings"]} == {"prompt_leak"}
    config = tmp_path / "sft.json"
    config.write_text('{"assistant_only_loss": true, "per_device_train_batch_size": 2}')
    result, data = run_json(LLAMA, RAW / "chat.jsonl", "--pipeline", "trl", "--trl-config", config)
    assert result.exit_code == 0, result.output
    assert data["data"]["trl"]["assistant_only_loss"] is True and len(data["summary"]["loss"]) == 2  # batches of 2
    result, data = run_json(
        LLAMA, RAW / "chat.jsonl", "--pipeline", "trl", "--trl-config", config, "--no-assistant-only-loss"
    )
    assert result.exit_code == 1  # a flag overrides the file


def test_collate_catches_a_collator_that_trains_the_prompt():
    spec = f"{RAW / 'collators.py'}:labels_copy_input_ids"
    result, data = run_json(LLAMA, RAW / "chat.jsonl", "--collate", spec, "--collate-input", "tokens")
    assert result.exit_code == 1 and {f["check"] for f in data["findings"]} == {"prompt_leak"}
    assert data["data"]["pipeline"] == "collate"


def test_roles_prints_the_strip_and_json():
    result = run("roles", LLAMA, RAW / "chat.jsonl", "--show", "1")
    assert result.exit_code == 0, result.output
    assert "row 0 (chat): 57 tokens, 18 completion, 2 not judged" in result.stdout
    result = run("roles", str(FIXTURES / "tokenizers/llama3-chat"), RAW / "tool_chat.jsonl", "--format", "json")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)["rows"]
    completion = "".join(t["text"] for t in row["tokens"] if t["role"] == "completion")
    assert completion == '{"name": "add", "parameters": {"a": 2, "b": 3}}<|eot_id|>2 plus 3 is 5.<|eot_id|>'
    assert all(t["label"] == (t["token_id"] if t["role"] == "completion" else -100) for t in row["tokens"])
    bad = run("roles", LLAMA, BATCHES / "llama_clean.safetensors")
    assert bad.exit_code == 2 and "roles are derived from raw rows" in bad.stderr


ADAPTERS = FIXTURES / "adapters"
MODELS = FIXTURES / "models"


def run_wide(*args: str):
    """The text report on a 200-column terminal, so that phrases are not wrapped."""
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def run_command_json(command: str, *args: str):
    result = run(command, *args, "--format", "json")
    return result, json.loads(result.stdout) if result.stdout else None


def test_grads_frozen_block_exits_1_naming_the_block():
    result, data = run_command_json("grads", MODELS / "tiny-llama-frozen-block", BATCHES / "llama_clean.safetensors")
    assert result.exit_code == 1, result.output
    assert data["schema_version"] == 1 and data["samples"] == []
    assert [f["check"] for f in data["findings"]] == ["untrained_parameters"]
    assert "model.layers.1." in data["findings"][0]["message"]
    zero = {p["module"] for p in data["grads"]["parameters"] if p["status"] == "zero_gradient"}
    assert zero and all(m.startswith("model.layers.1.") for m in zero)
    assert {"global_norm", "clip_factor", "depth_ratio", "block_grad_norms", "modules"} <= set(data["grads"])


def test_grads_warning_exits_0_and_1_with_strict():
    args = (MODELS / "tiny-llama-exploding", BATCHES / "llama_clean.safetensors")
    result, data = run_command_json("grads", *args)
    assert result.exit_code == 0 and [f["check"] for f in data["findings"]] == ["exploding_gradient"]
    assert run("grads", *args, "--strict").exit_code == 1


def test_grads_text_report_and_adapter_rows():
    result = run_wide("grads", ADAPTERS / "tiny-llama-lora-detached", BATCHES / "llama_clean.safetensors")
    assert result.exit_code == 1
    assert "untrained_parameters" in result.stdout and "layer 1 attention (adapter)" in result.stdout
    assert "frozen, not shown" in result.stdout


def test_grads_overfit_reports_the_curve(tmp_path):
    out = tmp_path / "grads.json"
    args = ["--overfit", "4", "--lr", "1e-3", "--output", out]
    result, data = run_command_json("grads", LLAMA, BATCHES / "llama_clean.safetensors", *args)
    assert result.exit_code == 0, result.output
    curve = data["overfit"]
    assert len(curve["losses"]) == 5 and curve["losses"][-1] < curve["losses"][0]
    assert curve["optimizer"] == "adamw" and curve["lr"] == 1e-3
    assert json.loads(out.read_text()) == data
    text = run_wide(
        "grads", LLAMA, BATCHES / "llama_clean.safetensors", "--overfit", "2", "--optimizer", "sgd", "--lr", "0"
    )
    assert "cannot_overfit" in text.stdout and "the loss does not halve" in text.stdout


def test_check_params_adds_the_gradient_pass_to_the_same_report():
    result, plain = run_json(LLAMA, BATCHES / "llama_clean.jsonl", "--batch-size", "2")
    assert result.exit_code == 0 and "grads" not in plain
    result, data = run_json(LLAMA, BATCHES / "llama_clean.jsonl", "--batch-size", "2", "--params", "--lr", "1e-4")
    assert result.exit_code == 0, result.output
    assert data["samples"] == plain["samples"] and data["grads"]["lr"] == 1e-4
    assert any("first batch (2 row(s)) of 2" in note for note in data["summary"]["notes"])


def test_verify_catches_the_wrong_backward_and_passes_the_right_one():
    losses = FIXTURES / "losses.py"
    args = (LLAMA, BATCHES / "llama_clean.safetensors", "--param-sample", "1", "--directions", "1")
    result, data = run_command_json("verify", *args, "--loss", f"{losses}:wrong_backward")
    assert result.exit_code == 1 and [f["check"] for f in data["findings"]] == ["gradient_mismatch"]
    assert data["verify"]["precision"] == "float64" and data["verify"]["max_relative_error"] > 0.5
    result, data = run_command_json("verify", *args, "--loss", f"{losses}:fused_token_mean")
    assert result.exit_code == 0 and data["findings"] == []
    assert run("verify", *args).exit_code == 0


def test_adapter_with_unknown_base_exits_2(tmp_path):
    moved = tmp_path / "adapter"
    moved.mkdir()
    for f in (ADAPTERS / "tiny-llama-lora").iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    result = run("grads", moved, BATCHES / "llama_clean.safetensors")
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "--base" in lines[0]
    assert run("grads", moved, BATCHES / "llama_clean.safetensors", "--base", LLAMA).exit_code == 0


def test_probes_and_accumulate_in_json_and_terminal():
    result, data = run_json(GPT2, BATCHES / "gpt2_clean.safetensors", "--accumulate", "3", "--probes", "causal,weights")
    assert result.exit_code == 1
    assert [f["check"] for f in data["findings"]] == ["accumulation_mismatch"]
    assert set(data["probes"]) == {"causal", "packing", "weights", "accumulate"}
    assert data["probes"]["causal"]["ran"] and data["probes"]["causal"]["backward_passes"] == 0
    assert data["probes"]["causal"]["note"].startswith("free screen of the loss's own gradient: ")
    assert not data["probes"]["packing"]["ran"] and data["probes"]["accumulate"]["forward_passes"] == 3
    [acc] = data["accumulation"]
    assert acc["micro_batches"] == 3 and 0 < acc["cosine"] < 1
    text = run("check", LLAMA, BATCHES / "llama_packed_cache_leak.safetensors")
    assert text.exit_code == 1 and "cross_document_leak" in text.stdout
    assert "Probes" in text.stdout and "2 backward (batched; shared with causal)" in text.stdout


def test_packed_batch_from_a_file_is_clean_when_it_passes_use_cache_false():
    result, data = run_json(GPT2, BATCHES / "gpt2_packed_clean.safetensors", "--response-template", "Answer:")
    assert result.exit_code == 0, result.output
    assert data["probes"]["packing"]["ran"] and data["findings"] == []


def test_scan_exit_codes_and_json():
    result = run("scan", BATCHES / "llama_clean.jsonl", "--tokenizer", LLAMA, "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema_version"] == 1 and data["kind"] == "scan" and data["summary"]["ok"] is True
    assert data["summary"]["rows"] == 4 and data["findings"] == []
    result = run(
        "scan", BATCHES / "llama_prompt_leak.jsonl", "--tokenizer", LLAMA, "--format", "json", "--examples", "1"
    )
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["checks"]["prompt_leak"]["rows"] == 4 and data["checks"]["prompt_leak"]["first_rows"] == [0]
    assert data["summary"]["checks_failed"] == ["prompt_leak"] and data["summary"]["errors"] == 4
    assert [w["row"] for w in data["worst_rows"]][:1] == [2]
    assert set(data["distributions"]) == {"length", "trained_fraction"}


def test_scan_text_report_and_output_file(tmp_path):
    out = tmp_path / "scan.json"
    result = run("scan", BATCHES / "gpt2_eos_untrained_lm_collator.safetensors", "--tokenizer", GPT2, "--output", out)
    assert result.exit_code == 1
    assert "eos_untrained" in result.stdout and "gradscope inspect MODEL DATA --row N" in result.stdout
    assert json.loads(out.read_text())["checks"]["eos_untrained"]["rows"] == 3


def test_scan_without_end_tokens_says_eos_was_not_checked():
    result = run("scan", BATCHES / "llama_eos_untrained.safetensors", "--format", "json")
    assert result.exit_code == 0
    assert any("eos_untrained was not checked" in n for n in json.loads(result.stdout)["summary"]["notes"])
    result = run("scan", BATCHES / "llama_eos_untrained.safetensors", "--end-token-id", "2", "--format", "json")
    assert result.exit_code == 1


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--probes", "causal,casual"], "unknown probe 'casual'"),
        (["--accumulate", "4"], "batch 0 has 3 row(s), too few to split into 4 micro-batches"),
    ],
)
def test_bad_probe_options_exit_2(args, expected):
    result = run("check", LLAMA, BATCHES / "llama_clean.safetensors", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and expected in result.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["nope.jsonl"], "no such data"),
        ([BATCHES / "llama_clean.jsonl", "--tokenizer", BATCHES], "no tokenizer files"),
        (["RAW"], "raw text"),
    ],
)
def test_scan_bad_input_exits_2_with_one_error_line(args, expected, tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    result = run("scan", *[raw if a == "RAW" else a for a in args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], result.stderr
    assert result.stdout == ""


def test_device_map_auto_gives_the_same_report():
    _, plain = run_json(LLAMA, BATCHES / "llama_prompt_leak.safetensors")
    _, mapped = run_json(LLAMA, BATCHES / "llama_prompt_leak.safetensors", "--device-map", "auto")
    assert plain["model"].pop("device_map") is None
    assert mapped["model"].pop("device_map") in (None, {"": "cpu"})  # one CPU: accelerate may place nothing
    for report in (plain, mapped):  # what the probes cost in seconds differs from run to run
        for probe in report["probes"].values():
            probe.pop("seconds")
    assert mapped == plain


def test_unavailable_device_exits_2():
    result = run("check", LLAMA, BATCHES / "llama_clean.safetensors", "--device", "cuda:99")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: device 'cuda:99' is not available")
