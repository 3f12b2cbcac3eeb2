"""The bad-input contract of every command, fuzzed: exit 2, exactly one ``Error:`` line, no traceback, nothing on
stdout with ``--format json``; and a valid input's verdict unchanged by irrelevant perturbations.

Each case is one of the classes of bad input users and attackers were seen to give (the classes the bad-input docs
list); the generated ones (Hypothesis) cover JSON rows and safetensors headers.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from gradscope.cli import app

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
LLAMA = FIXTURES / "models/tiny-llama-chat"
GPT2 = FIXTURES / "models/tiny-gpt2"
CLEAN = FIXTURES / "batches/llama_clean.safetensors"
CLEAN_JSONL = FIXTURES / "batches/llama_clean.jsonl"
CHAT = FIXTURES / "raw/chat.jsonl"
FAST = ("--probes", "none", "--windows", "0")


def invoke(*args: object, stdin: str | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], input=stdin)


def assert_contract(result, *, json_stdout: bool = False) -> None:
    """Any input: exit 0, 1 or 2, no traceback; on 2 exactly one ``Error:`` line on stderr (and, with
    ``--format json``, nothing on stdout)."""
    __tracebackhide__ = True
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not crashed, f"traceback: {result.exception!r}\n{result.output}"
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1, 2), result.output
    if result.exit_code == 2:
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, result.stderr
        assert [line for line in result.stderr.splitlines() if line.strip()] == errors, result.stderr
        if json_stdout:
            assert result.stdout == "", result.stdout


def assert_bad_input(result, *words: str, json_stdout: bool = False) -> str:
    """Exit 2 with one ``Error:`` line that names each of ``words``; returns the line."""
    __tracebackhide__ = True
    assert_contract(result, json_stdout=json_stdout)
    assert result.exit_code == 2, f"exit {result.exit_code}, expected 2 (bad input)\n{result.output}"
    line = result.stderr.strip()
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    return line


# ----------------------------------------------------------------------------------------------- batch tensors


def _clean() -> dict[str, torch.Tensor]:
    return load_file(str(CLEAN))


def _with(**changes):
    def build() -> dict[str, torch.Tensor]:
        batch = _clean()
        for key, fn in changes.items():
            value = fn(batch)
            if value is None:
                batch.pop(key, None)
            else:
                batch[key] = value
        return batch

    return build


def _set(key: str, value: float, dtype=None):
    def fn(b):
        t = b[key].to(dtype or b[key].dtype).clone()
        t[1, 3] = value
        return t

    return fn


BATCHES = {
    "mask_2": (_with(attention_mask=_set("attention_mask", 2)), ["attention_mask", "row 1", "position 3"]),
    "mask_-1": (_with(attention_mask=_set("attention_mask", -1)), ["attention_mask", "row 1"]),
    "mask_0.5": (_with(attention_mask=_set("attention_mask", 0.5, torch.float32)), ["attention_mask"]),
    "mask_nan": (_with(attention_mask=_set("attention_mask", float("nan"), torch.float32)), ["attention_mask"]),
    "role_mask_3": (_with(completion_mask=_set("completion_mask", 3)), ["completion_mask"]),
    "misspelled_key": (
        _with(attention_masks=lambda b: b["attention_mask"], attention_mask=lambda b: None),
        ["attention_masks", "attention_mask"],
    ),
    "unknown_tensor": (_with(foo=lambda b: b["input_ids"]), ["'foo'"]),
    "labels_float": (_with(labels=lambda b: b["labels"].float()), ["labels", "float32"]),
    "labels_int32": (_with(labels=lambda b: b["labels"].int()), ["labels", "int32"]),
    "labels_-5": (_with(labels=_set("labels", -5)), ["labels", "-5"]),
    "ids_bf16": (_with(input_ids=lambda b: b["input_ids"].bfloat16()), ["input_ids", "bfloat16"]),
    "ids_bool": (_with(input_ids=lambda b: b["input_ids"].bool()), ["input_ids", "bool"]),
    "ids_past_vocab": (_with(input_ids=_set("input_ids", 480)), ["input_ids", "480"]),
    "ids_negative": (_with(input_ids=_set("input_ids", -3)), ["input_ids", "-3"]),
    "empty_batch": (lambda: {k: v[:0] for k, v in _clean().items()}, ["empty"]),
    "zero_length_rows": (lambda: {k: v[:, :0] for k, v in _clean().items()}, ["empty"]),
    "mask_wrong_length": (_with(attention_mask=lambda b: b["attention_mask"][:, :-1]), ["attention_mask", "shape"]),
    "ids_1d": (lambda: {"input_ids": _clean()["input_ids"][0]}, ["input_ids", "2D"]),
}


def _save(tmp_path: Path, batch: dict[str, torch.Tensor], name: str = "batch.safetensors") -> Path:
    path = tmp_path / name
    save_file({k: v.contiguous().clone() for k, v in batch.items()}, str(path))
    return path


@pytest.mark.parametrize("case", sorted(BATCHES))
def test_bad_batch_on_check(tmp_path, case):
    build, words = BATCHES[case]
    result = invoke("check", LLAMA, _save(tmp_path, build()), "--format", "json")
    assert_bad_input(result, "batch.safetensors", *words, json_stdout=True)


@pytest.mark.parametrize("command", ["grads", "verify", "inspect"])
@pytest.mark.parametrize("case", ["mask_2", "misspelled_key", "labels_float", "ids_bf16", "empty_batch"])
def test_bad_batch_on_the_other_model_commands(tmp_path, command, case):
    build, words = BATCHES[case]
    fmt = () if command == "inspect" else ("--format", "json")
    result = invoke(command, LLAMA, _save(tmp_path, build()), *fmt)
    assert_bad_input(result, *words, json_stdout=bool(fmt))


SCAN_BATCHES = [
    "mask_2",
    "mask_-1",
    "mask_0.5",
    "mask_nan",
    "labels_float",
    "labels_-5",
    "ids_bf16",
    "ids_bool",
    "ids_negative",
    "empty_batch",
    "zero_length_rows",
    "mask_wrong_length",
    "role_mask_3",
]


@pytest.mark.parametrize("case", SCAN_BATCHES)
def test_bad_batch_on_scan(tmp_path, case):
    build, words = BATCHES[case]
    result = invoke("scan", _save(tmp_path, build()), "--format", "json")
    assert_bad_input(result, "batch.safetensors", *words, json_stdout=True)


def test_scan_ids_past_the_tokenizers_vocabulary(tmp_path):
    build, _ = BATCHES["ids_past_vocab"]
    result = invoke("scan", _save(tmp_path, build()), "--tokenizer", LLAMA, "--format", "json")
    assert_bad_input(result, "input_ids", "480", "row 1", "position 3", json_stdout=True)


def test_sequence_longer_than_the_models_positions(tmp_path):
    ids = torch.randint(5, 400, (1, 513))
    result = invoke("check", GPT2, _save(tmp_path, {"input_ids": ids}), "--format", "json")
    assert_bad_input(result, "513", "512", json_stdout=True)


# ----------------------------------------------------------------------------------------------- rows


def _row(**row) -> str:
    return json.dumps(row)


IDS = [1, 296, 202, 279, 405, 2]
ROW_FILES = {
    "invalid_utf8": (b'{"input_ids": [1, 2]}\n{"prompt": "\xff\xfe", "completion": "x"}\n', ["line 2", "UTF-8"]),
    "lone_surrogate": (b'{"prompt": "a\\ud800b", "completion": " c"}\n', ["line 1", "surrogate"]),
    "deep_nesting": (b'{"input_ids": ' + b"[" * 10000 + b"]" * 10000 + b"}\n", ["line 1", "nest"]),
    "int_past_int64": (_row(input_ids=[1, 2**70, 3]).encode() + b"\n", ["line 1", "input_ids", "int64"]),
    "float_ids": (_row(input_ids=[1, 2.5, 3]).encode() + b"\n", ["line 1", "input_ids"]),
    "bool_ids": (_row(input_ids=[1, True, 3]).encode() + b"\n", ["line 1", "input_ids"]),
    "null_in_ids": (_row(input_ids=[1, None, 3]).encode() + b"\n", ["line 1", "input_ids"]),
    "nested_ids": (_row(input_ids=[[1, 2], [3]]).encode() + b"\n", ["line 1", "input_ids"]),
    "empty_ids": (_row(input_ids=[]).encode() + b"\n", ["line 1", "input_ids"]),
    "labels_-5": (_row(input_ids=IDS, labels=[-100, -100, -5, 279, 405, 2]).encode() + b"\n", ["labels", "-5"]),
    "ids_past_vocab": (_row(input_ids=[1, 296, 9999]).encode() + b"\n", ["input_ids", "9999"]),
    "tools_not_json": (
        _row(
            messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tools="{not json"
        ).encode()
        + b"\n",
        ["row 0", "tools"],
    ),
    "not_an_object": (b"[1, 2, 3]\n", ["line 1", "object"]),
    "misspelled_key": (_row(input_ids=IDS, attention_masks=[1] * 6).encode() + b"\n", ["attention_masks"]),
}


@pytest.mark.parametrize("case", sorted(ROW_FILES))
def test_bad_jsonl_rows_on_check(tmp_path, case):
    data, words = ROW_FILES[case]
    path = tmp_path / "rows.jsonl"
    path.write_bytes(data)
    result = invoke("check", LLAMA, path, "--format", "json", *FAST)
    assert_bad_input(result, "rows.jsonl", *words, json_stdout=True)


SCAN_ROWS = [
    "invalid_utf8",
    "deep_nesting",
    "int_past_int64",
    "float_ids",
    "bool_ids",
    "null_in_ids",
    "nested_ids",
    "empty_ids",
    "not_an_object",
]


@pytest.mark.parametrize("case", SCAN_ROWS)
def test_bad_jsonl_rows_on_scan(tmp_path, case):
    data, words = ROW_FILES[case]
    path = tmp_path / "rows.jsonl"
    path.write_bytes(data)
    result = invoke("scan", path, "--tokenizer", LLAMA, "--format", "json")
    assert_bad_input(result, "rows.jsonl", json_stdout=True)


@pytest.mark.parametrize("case", ["invalid_utf8", "lone_surrogate", "tools_not_json", "deep_nesting"])
def test_bad_raw_rows_on_roles(tmp_path, case):
    data, words = ROW_FILES[case]
    path = tmp_path / "rows.jsonl"
    path.write_bytes(data)
    result = invoke("roles", LLAMA, path, "--format", "json")
    assert_bad_input(result, "rows.jsonl", json_stdout=True)


@pytest.mark.parametrize(
    "body, words",
    [
        pytest.param(b"[" * 10000 + b"]" * 10000, ["nest"], id="deep_nesting"),
        pytest.param(b'[{"prompt": "\xff", "completion": "x"}]', ["UTF-8"], id="invalid_utf8"),
        pytest.param(b'[{"input_ids": [1, 99999999999999999999999]}]', ["row 0", "int64"], id="int_past_int64"),
        pytest.param(b'[{"input_ids": [1, 2]}, 7]', ["row 1", "object"], id="not_an_object"),
        pytest.param(b'[{"input_ids": [1, 2]}', ["JSON"], id="unterminated"),
    ],
)
@pytest.mark.parametrize("command", ["check", "scan"])
def test_bad_json_arrays(tmp_path, body, words, command):
    # (scan reads a .json file that is not an array as JSON lines: that is its documented leniency; check does not)
    path = tmp_path / "rows.json"
    path.write_bytes(body)
    args = ("check", LLAMA, path) if command == "check" else ("scan", path, "--tokenizer", LLAMA)
    result = invoke(*args, "--format", "json")
    assert_bad_input(result, "rows.json", *words, json_stdout=True)


PARQUET_COLUMNS = {
    "string_ids": pa.array(["1 2 3", "4 5"]),
    "struct_ids": pa.array([{"a": 1}, {"a": 2}]),
    "scalar_ids": pa.array([1, 2]),
    "null_inside": pa.array([[1, None, 3], [4, 5]]),
    "null_row": pa.array([[1, 2, 3], None]),
    "float_ids": pa.array([[1.0, 2.5], [3.0]]),
    "bool_ids": pa.array([[True, False], [True]]),
    "negative_ids": pa.array([[1, -2], [3]]),
    "empty_row": pa.array([[1, 2], []], type=pa.list_(pa.int64())),
}


@pytest.mark.parametrize("case", sorted(PARQUET_COLUMNS))
@pytest.mark.parametrize("command", ["check", "scan"])
def test_bad_parquet_columns(tmp_path, case, command):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"input_ids": PARQUET_COLUMNS[case]}), path)
    args = ("check", LLAMA, path, *FAST) if command == "check" else ("scan", path)
    result = invoke(*args, "--format", "json")
    assert_bad_input(result, "rows.parquet", "input_ids", json_stdout=True)


def _saved_dataset(tmp_path: Path) -> Path:
    import datasets

    path = tmp_path / "ds"
    rows = [json.loads(line) for line in CLEAN_JSONL.read_text().splitlines()]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(path))
    return path


def test_a_json_file_that_is_not_an_array_is_bad_input_to_check(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('{"input_ids": [1, 2]}')
    assert_bad_input(invoke("check", LLAMA, path, "--format", "json"), "rows.json", "array", json_stdout=True)


@pytest.mark.parametrize(
    "file, content",
    [
        ("dataset_dict.json", "{not json"),
        ("dataset_dict.json", "[1, 2]"),
        ("dataset_dict.json", '{"splits": "train"}'),
        ("train/state.json", "{not json"),
        ("train/state.json", '{"_data_files": 3}'),
        ("train/state.json", '{"_data_files": [{"filename": "../../../etc/passwd"}]}'),
        ("train/dataset_info.json", "\xff"),
        ("train/dataset_info.json", '{"splits": [1]}'),
    ],
)
@pytest.mark.parametrize("command", ["check", "scan"])
def test_corrupt_saved_dataset(tmp_path, file, content, command):
    path = _saved_dataset(tmp_path)
    (path / file).write_bytes(content.encode("latin-1"))
    args = ("check", LLAMA, path, *FAST) if command == "check" else ("scan", path)
    result = invoke(*args, "--format", "json")
    assert_bad_input(result, Path(file).name, json_stdout=True)


# ----------------------------------------------------------------------------------------------- model directory


def _model_copy(tmp_path: Path, source: Path = LLAMA) -> Path:
    path = tmp_path / "model"
    shutil.copytree(source, path)
    return path


def _edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def _keep_weights(path: Path, keep) -> None:
    weights = load_file(str(path / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if keep(k)}, str(path / "model.safetensors"))


def _truncate(file: Path, keep: float = 0.5) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


MODEL_DIRS = {
    "truncated_weights": (lambda p: _truncate(p / "model.safetensors"), ["model.safetensors"]),
    "corrupt_header": (lambda p: (p / "model.safetensors").write_bytes(b"\xff" * 64), ["model.safetensors"]),
    "config_not_json": (lambda p: (p / "config.json").write_text("{"), ["config.json"]),
    "config_eos_float": (lambda p: _edit_config(p, eos_token_id=2.5), ["eos_token_id", "2.5"]),
    "config_vocab_0": (lambda p: _edit_config(p, vocab_size=0), ["vocab_size"]),
    "config_vocab_string": (lambda p: _edit_config(p, vocab_size="many"), ["vocab_size"]),
    "config_more_layers": (lambda p: _edit_config(p, num_hidden_layers=4), ["missing", "layers.2"]),
    "missing_half_layers": (lambda p: _keep_weights(p, lambda k: "layers.1." not in k), ["missing", "layers.1"]),
    "no_expected_tensor": (lambda p: save_file({"x": torch.zeros(2)}, str(p / "model.safetensors")), ["missing"]),
    "unexpected_tensor": (
        lambda p: save_file(
            {**load_file(str(p / "model.safetensors")), "extra.weight": torch.zeros(2)}, str(p / "model.safetensors")
        ),
        ["unexpected", "extra.weight"],
    ),
    "tokenizer_json_corrupt": (lambda p: (p / "tokenizer.json").write_text("{"), ["tokenizer"]),
}


@pytest.mark.parametrize("case", sorted(MODEL_DIRS))
def test_bad_model_directory(tmp_path, case):
    edit, words = MODEL_DIRS[case]
    model = _model_copy(tmp_path)
    edit(model)
    result = invoke("check", model, CLEAN, "--format", "json")
    assert_bad_input(result, *words, json_stdout=True)


@pytest.mark.parametrize("command", ["grads", "verify"])
def test_random_weights_never_give_a_verdict(tmp_path, command):
    model = _model_copy(tmp_path)
    MODEL_DIRS["missing_half_layers"][0](model)
    result = invoke(command, model, CLEAN, "--format", "json")
    assert_bad_input(result, "missing", json_stdout=True)


def _adapter_copy(tmp_path: Path) -> Path:
    path = tmp_path / "adapter"
    shutil.copytree(FIXTURES / "adapters/tiny-llama-lora", path)
    config = json.loads((path / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(LLAMA)
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: _truncate(p / "adapter_model.safetensors"),
        lambda p: (p / "adapter_model.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{bad json"),
        lambda p: (p / "adapter_config.json").write_text("[]"),
        lambda p: save_file({"nothing.weight": torch.zeros(2)}, str(p / "adapter_model.safetensors")),
    ],
)
def test_bad_adapter_directory(tmp_path, edit):
    adapter = _adapter_copy(tmp_path)
    edit(adapter)
    result = invoke("check", adapter, CLEAN, "--format", "json")
    assert_bad_input(result, "adapter", json_stdout=True)


# ----------------------------------------------------------------------------------------------- user code

LOSSES = {
    "raises": (
        "def loss(logits, labels):\n    raise ZeroDivisionError('boom')\n",
        ["loss", "ZeroDivisionError", "boom"],
    ),
    "exits": ("import sys\ndef loss(logits, labels):\n    sys.exit(3)\n", ["loss", "SystemExit"]),
    "raises_in_backward": (
        "import torch\n"
        "class Bad(torch.autograd.Function):\n"
        "    @staticmethod\n    def forward(ctx, x):\n        return x.sum()\n"
        "    @staticmethod\n    def backward(ctx, g):\n        raise ArithmeticError('no backward')\n"
        "def loss(logits, labels):\n    return Bad.apply(logits)\n",
        ["loss", "ArithmeticError", "no backward"],
    ),
    "complex": ("def loss(logits, labels):\n    return (logits.sum() * 1j)\n", ["loss", "complex"]),
    "wrong_shape": ("def loss(logits, labels):\n    return logits.sum(-1)\n", ["loss", "scalar"]),
    "detached": ("def loss(logits, labels):\n    return logits.sum().detach()\n", ["loss", "gradient"]),
    "integer": ("def loss(logits, labels):\n    return (logits.sum() > 0).long()\n", ["loss", "int64"]),
    "not_a_tensor": ("def loss(logits, labels):\n    return 1.5\n", ["loss", "float"]),
    "import_fails": (
        "import no_such_module_anywhere\ndef loss(logits, labels):\n    return logits.sum()\n",
        ["ModuleNotFoundError"],
    ),
    "import_exits": ("import sys\nsys.exit(0)\n", ["SystemExit"]),
    "syntax_error": ("def loss(logits, labels)\n    return 1\n", ["SyntaxError"]),
}


@pytest.mark.parametrize("case", sorted(LOSSES))
@pytest.mark.parametrize("command", ["check", "grads"])
def test_bad_loss_function(tmp_path, case, command):
    source, words = LOSSES[case]
    (tmp_path / "user_loss.py").write_text(source)
    extra = FAST if command == "check" else ()
    result = invoke(command, LLAMA, CLEAN, "--loss", f"{tmp_path / 'user_loss.py'}:loss", "--format", "json", *extra)
    assert_bad_input(result, *words, json_stdout=True)


COLLATORS = {
    "raises": ("def collate(rows):\n    raise LookupError('no rows')\n", ["collate", "LookupError", "no rows"]),
    "exits": ("import sys\ndef collate(rows):\n    sys.exit('bye')\n", ["collate", "SystemExit"]),
    "not_a_dict": ("def collate(rows):\n    return [1, 2]\n", ["collate"]),
    "import_exits": ("raise SystemExit(1)\n", ["SystemExit"]),
}


@pytest.mark.parametrize("case", sorted(COLLATORS))
def test_bad_collator(tmp_path, case):
    source, words = COLLATORS[case]
    (tmp_path / "user_collate.py").write_text(source)
    result = invoke(
        "check",
        LLAMA,
        FIXTURES / "raw/prompt_completion.jsonl",
        "--collate",
        f"{tmp_path / 'user_collate.py'}:collate",
        "--format",
        "json",
        *FAST,
    )
    assert_bad_input(result, *words, json_stdout=True)


# ----------------------------------------------------------------------------------------------- flags and paths
# These need the CLI's single error boundary (usage errors and output paths are the CLI's to report).


@pytest.mark.parametrize(
    "args, words",
    [
        (("check", LLAMA, CLEAN, "--format", "yaml"), ["--format", "text", "json"]),
        (("check", LLAMA, CLEAN, "--samples", "0"), ["--samples"]),
        (("verify", LLAMA, CLEAN, "--seed", str(2**70)), ["--seed"]),
        (("scan", CLEAN, "--num-proc", "x"), ["--num-proc"]),
        (("check", LLAMA), ["DATA"]),
    ],
)
def test_usage_errors_are_one_error_line(args, words):
    assert_bad_input(invoke(*args), *words)


@pytest.mark.parametrize("command", ["check", "scan"])
@pytest.mark.parametrize("where", ["missing_dir", "a_directory"])
def test_unwritable_output_path(tmp_path, command, where):
    out = tmp_path / "no" / "such" / "report.json" if where == "missing_dir" else tmp_path
    args = ("check", LLAMA, CLEAN, *FAST) if command == "check" else ("scan", CLEAN)
    result = invoke(*args, "--output", out, "--format", "json")
    assert_bad_input(result, str(out), json_stdout=True)


# ----------------------------------------------------------------------------------------------- generated inputs

_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=5),
)
_TOKEN_LISTS = st.lists(st.one_of(st.integers(min_value=-5, max_value=600), _JSON_SCALARS), max_size=6)
_ROWS = st.fixed_dictionaries(
    {"input_ids": st.one_of(_TOKEN_LISTS, _JSON_SCALARS)},
    optional={
        "labels": _TOKEN_LISTS,
        "attention_mask": _TOKEN_LISTS,
        "completion_mask": _TOKEN_LISTS,
        "prompt": _JSON_SCALARS,
        "attention_masks": _TOKEN_LISTS,
    },
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_ROWS, min_size=1, max_size=3))
def test_generated_json_rows_keep_the_contract(tmp_path, rows):
    path = tmp_path / "gen.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for args in (("scan", path), ("check", LLAMA, path, *FAST)):
        assert_contract(invoke(*args, "--format", "json"), json_stdout=True)


_DTYPES = st.sampled_from(["I64", "I32", "I8", "U8", "BOOL", "F32", "F16", "BF16", "F64", "XX", 7])
_HEADER = st.dictionaries(
    st.sampled_from(["input_ids", "labels", "attention_mask", "__metadata__"]),
    st.fixed_dictionaries(
        {
            "dtype": _DTYPES,
            "shape": st.lists(st.integers(min_value=-1, max_value=4), max_size=3),
            "data_offsets": st.lists(st.integers(min_value=-1, max_value=80), min_size=0, max_size=3),
        }
    ),
    min_size=1,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=_HEADER, payload=st.binary(max_size=80), length_error=st.integers(min_value=-4, max_value=4))
def test_generated_safetensors_headers_keep_the_contract(tmp_path, header, payload, length_error):
    text = json.dumps(header).encode()
    path = tmp_path / "gen.safetensors"
    path.write_bytes(struct.pack("<Q", max(0, len(text) + length_error)) + text + payload)
    for args in (("scan", path), ("check", LLAMA, path, *FAST)):
        assert_contract(invoke(*args, "--format", "json"), json_stdout=True)


# ----------------------------------------------------------------------------------------------- irrelevant changes


def _verdict(result) -> tuple[int, list]:
    assert_contract(result, json_stdout=True)
    data = json.loads(result.stdout)
    return result.exit_code, sorted((f["check"], f.get("sample")) for f in data["findings"])


def _reorder(text: str) -> str:
    return "".join(json.dumps(dict(reversed(list(json.loads(line).items())))) + "\n" for line in text.splitlines())


PERTURBATIONS = {
    "key_order": _reorder,
    "no_trailing_newline": lambda text: text.rstrip("\n"),
    "blank_lines": lambda text: text.replace("\n", "\n\n") + "\n",
    "crlf": lambda text: text.replace("\n", "\r\n"),
    "bom": lambda text: "\ufeff" + text,
}


@pytest.mark.parametrize("perturb", sorted(PERTURBATIONS))
@pytest.mark.parametrize("data", ["batches/llama_clean.jsonl", "batches/llama_prompt_leak.jsonl", "raw/chat.jsonl"])
def test_verdict_unchanged_by_irrelevant_changes(tmp_path, perturb, data):
    source = FIXTURES / data
    changed = tmp_path / source.name
    changed.write_bytes(PERTURBATIONS[perturb](source.read_text(encoding="utf-8")).encode("utf-8"))
    for args in (("check", LLAMA, "{}", "--samples", "2", *FAST), ("scan", "{}", "--tokenizer", LLAMA)):
        before = _verdict(invoke(*[source if a == "{}" else a for a in args], "--format", "json"))
        after = _verdict(invoke(*[changed if a == "{}" else a for a in args], "--format", "json"))
        assert after == before, (args[0], perturb)


@pytest.mark.parametrize("perturb", ["key_order", "bom", "no_trailing_newline"])
def test_json_array_verdict_unchanged_by_irrelevant_changes(tmp_path, perturb):
    rows = [json.loads(line) for line in CLEAN_JSONL.read_text().splitlines()]
    plain, changed = tmp_path / "plain.json", tmp_path / "changed.json"
    plain.write_text(json.dumps(rows, indent=1) + "\n")
    if perturb == "key_order":
        rows = [dict(reversed(list(r.items()))) for r in rows]
    text = json.dumps(rows, indent=1) + ("" if perturb == "no_trailing_newline" else "\n")
    changed.write_text(("\ufeff" if perturb == "bom" else "") + text, encoding="utf-8")
    before = _verdict(invoke("check", LLAMA, plain, *FAST, "--format", "json"))
    assert before[0] == 0
    assert _verdict(invoke("check", LLAMA, changed, *FAST, "--format", "json")) == before
