"""Hostile but realistic foreign text through every output: token texts, paths, role names, batch keys, tensor names
and error texts never put a workflow command on a line a CI runner reads, never write a raw control byte, and never
split an ``Error:`` line (the output rule, docs/bad-input.md).

The hostile tokenizer is built on the fly from the tiny chat model's: some of its tokens are renamed to texts that a
GitHub Actions runner would execute (``::stop-commands::``, ``##[add-mask]``) or that rewrite a terminal (ESC
sequences, NUL, DEL, a newline).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from gradscope.cli import app

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
LLAMA = FIXTURES / "models/tiny-llama-chat"
LEAK = FIXTURES / "batches/llama_prompt_leak.safetensors"
LEAK_JSONL = FIXTURES / "batches/llama_prompt_leak.jsonl"
CHAT = FIXTURES / "raw/chat.jsonl"
FAST = ("--probes", "none", "--windows", "0")

HOSTILE = {
    279: " ::stop-commands::x",
    304: "##[add-mask]s",
    262: "\x1b[2K\x1b[1A",
    302: "a\x00b\x7fc",
    273: "\n::error::injected",
    345: "##[error]e",
    434: "\r\x85\u2028\x9b31m",
}
"""Token id (each in the prompt-leak batch) → the hostile text it decodes to."""

ANNOTATION = re.compile(r"::(error|warning) (file=[^:,\n]*,)?title=[^:,\n]*::[^\n]*")
"""The one form of workflow command gradscope writes itself (under GITHUB_ACTIONS=true, on stderr)."""

RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def invoke(*args: object, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def runner_commands(text: str) -> list[str]:
    """Lines a runner would read as a workflow command: ``::`` after leading whitespace, or ``##[`` anywhere
    (a runner splits lines at CR as well as LF)."""
    return [line for line in re.split("\r\n|\r|\n", text) if line.lstrip().startswith("::") or "##[" in line]


def assert_safe(result, *, annotations: bool = False) -> None:
    """No raw control byte, no workflow command but gradscope's own annotations, in stdout and stderr."""
    __tracebackhide__ = True
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    for stream in (result.stdout, result.stderr):
        assert not RAW_CONTROL.findall(stream), RAW_CONTROL.findall(stream)
    assert runner_commands(result.stdout) == [], runner_commands(result.stdout)
    injected = [line for line in runner_commands(result.stderr) if not (annotations and ANNOTATION.fullmatch(line))]
    assert injected == [], injected


def assert_one_error_line(result, *words: str) -> str:
    """Exit 2, and stderr is exactly one ``Error:`` line naming each of ``words``."""
    __tracebackhide__ = True
    assert_safe(result)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: the character each byte is written as in a byte-level BPE vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(rest)}}


def hostile_model(tmp_path: Path, name: str = "model") -> Path:
    """The tiny chat model with the tokens of ``HOSTILE`` renamed (merges that make them dropped: the batches are
    tokenized already)."""
    model = tmp_path / name
    shutil.copytree(LLAMA, model)
    spec = json.loads((model / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    alphabet = _bytes_to_unicode()
    for token_id, text in HOSTILE.items():
        del vocab[by_id[token_id]]
        vocab["".join(alphabet[b] for b in text.encode())] = token_id
    renamed = {by_id[i] for i in HOSTILE}

    def keeps(merge: str | list[str]) -> bool:
        parts = merge.split(" ") if isinstance(merge, str) else merge
        return not (set(parts) & renamed or "".join(parts) in renamed)

    spec["model"]["merges"] = [m for m in spec["model"]["merges"] if keeps(m)]
    (model / "tokenizer.json").write_text(json.dumps(spec))
    return model


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    return hostile_model(tmp_path_factory.mktemp("hostile"))


def test_the_hostile_tokenizer_decodes_to_the_hostile_texts(hostile):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hostile)
    assert {i: tokenizer.decode([i]) for i in HOSTILE} == HOSTILE


# ----------------------------------------------------------------------------------------------- token texts


@pytest.mark.parametrize("actions", ["true", "false"])
@pytest.mark.parametrize("output_format", ["text", "json", "junit"])
def test_hostile_tokens_through_check(hostile, output_format, actions):
    result = invoke(
        "check", hostile, LEAK, "--format", output_format, *FAST, env={"GITHUB_ACTIONS": actions, "COLUMNS": "60"}
    )
    assert result.exit_code == 1, result.output
    assert_safe(result, annotations=actions == "true")
    if actions == "true":
        assert ANNOTATION.fullmatch(result.stderr.splitlines()[0])  # gradscope's own annotations are still written


def test_the_json_report_keeps_the_hostile_texts(hostile):
    result = invoke("check", hostile, LEAK, "--format", "json", *FAST)
    texts = {t["token_id"]: t["text"] for s in json.loads(result.stdout)["samples"] for t in s["tokens"]}
    assert {i: texts[i] for i in HOSTILE} == HOSTILE  # escaped for the log, not dropped: it parses back


def test_the_terminal_report_shows_the_hostile_texts_escaped(hostile):
    result = invoke("check", hostile, LEAK, *FAST, env={"COLUMNS": "200"})
    for shown in ("\\x1b[2K\\x1b[1A", "a\\x00b\\x7fc", "#\\x23[add-mask]s", "\\x3a:stop-commands::x"):
        assert shown in result.stdout, shown


@pytest.mark.parametrize("output_format", ["text", "json"])
def test_hostile_tokens_through_scan_roles_and_inspect(hostile, output_format):
    for args in (
        ("scan", LEAK_JSONL, "--tokenizer", hostile, "--format", output_format),
        ("roles", hostile, CHAT, "--format", output_format),
    ):
        assert_safe(invoke(*args, env={"COLUMNS": "60"}))
    if output_format == "text":
        assert_safe(invoke("inspect", hostile, LEAK, env={"COLUMNS": "60"}))


def test_a_lone_surrogate_in_a_token_text_leaves_the_html_page_encodable():
    from transformers import AutoModelForCausalLM

    from gradscope import check

    report = check(AutoModelForCausalLM.from_pretrained(LLAMA), load_file(str(LEAK)), probes=(), windows=0)
    report.samples[0].tokens[3].text = "a\udc80b"  # half of a UTF-16 pair, as a broken tokenizer can decode
    report.to_html().encode("utf-8")
    assert "a\\udc80b" in report.to_html()


# ----------------------------------------------------------------------------------------------- paths and names

INJECTED = "x\n::error file=a.py::injected ##[add-mask]y"


def test_a_model_path_with_a_newline_and_a_command(hostile, tmp_path):
    model = tmp_path / INJECTED
    shutil.copytree(LLAMA, model)
    for output_format in ("text", "json", "junit"):
        result = invoke(
            "check", model, LEAK, "--format", output_format, *FAST, env={"GITHUB_ACTIONS": "true", "COLUMNS": "300"}
        )
        assert result.exit_code == 1, result.output
        assert_safe(result, annotations=True)
    text = invoke("check", model, LEAK, *FAST, env={"COLUMNS": "300"}).stdout
    assert [line for line in text.splitlines() if line.startswith("model ")][0].count("\\n::error file=a.py") == 1


def test_a_data_path_with_a_newline_stays_on_the_scan_reports_data_line(tmp_path):
    data = tmp_path / (INJECTED + ".jsonl")
    shutil.copy(LEAK_JSONL, data)
    result = invoke("scan", data, env={"GITHUB_ACTIONS": "true", "COLUMNS": "300"})
    assert_safe(result, annotations=True)
    assert [line for line in result.stdout.splitlines() if line.startswith("data ")][0].count("\\n::error") == 1


@pytest.mark.parametrize(
    "args",
    [
        ("check", f"/nonexistent/{INJECTED}", LEAK),
        ("check", LLAMA, f"/nonexistent/{INJECTED}.jsonl"),
        ("check", LLAMA, LEAK, "--loss", f"/nonexistent/{INJECTED}.py:loss"),
        ("check", LLAMA, LEAK, "--html", f"/nonexistent/{INJECTED}/r.html"),
        ("check", LLAMA, LEAK, "--format", INJECTED),
        ("scan", f"/nonexistent/{INJECTED}.jsonl"),
    ],
)
def test_an_error_naming_a_hostile_path_is_one_line(args):
    line = assert_one_error_line(invoke(*args))
    assert "\\n" in line  # the newline is shown, escaped


def test_a_hostile_batch_key_is_one_error_line(tmp_path):
    batch = load_file(str(LEAK))
    batch[INJECTED] = batch["input_ids"].clone()
    path = tmp_path / "batch.safetensors"
    save_file(batch, str(path))
    assert_one_error_line(invoke("check", LLAMA, path, "--format", "json", *FAST), "batch.safetensors")


def test_a_hostile_tensor_name_in_the_model_is_one_error_line(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(LLAMA, model)
    weights = load_file(str(model / "model.safetensors"))
    weights[INJECTED] = torch.zeros(1)
    save_file(weights, str(model / "model.safetensors"))
    assert_one_error_line(invoke("check", model, LEAK, "--format", "json", *FAST), "unexpected")


def test_a_template_error_text_is_one_error_line(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(LLAMA, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ raise_exception('bad\\n::error::x ##[add-mask]y\\x1b[2K') }}"
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    assert_one_error_line(invoke("roles", model, CHAT), "row 0")


def test_a_hostile_role_name_is_one_error_line_or_shown_escaped(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"messages": [{"role": INJECTED, "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n"
    )
    for args in (
        ("roles", LLAMA, rows),
        ("roles", LLAMA, rows, "--format", "json"),
        ("check", LLAMA, rows, "--format", "json", *FAST),
    ):
        result = invoke(*args)
        assert_safe(result)
        if result.exit_code == 2:
            assert_one_error_line(result)


# ----------------------------------------------------------------------------------------------- crashes and hangs
# Each runs in a child process with a wall-clock timeout and an address-space limit: a hang or unbounded growth fails
# the test (a timeout or a MemoryError traceback) instead of stalling or exhausting the machine.

LIMIT_SECONDS = 120
LIMIT_BYTES = 4 << 30


def _limited() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))


def run_bounded(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [sys.executable, "-m", "gradscope", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=LIMIT_SECONDS,
        preexec_fn=_limited,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def assert_one_error(result: subprocess.CompletedProcess, *words: str) -> None:
    __tracebackhide__ = True
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert not RAW_CONTROL.findall(result.stderr) and result.stdout == ""
    for word in words:
        assert word in errors[0], errors[0]


def _model_with(tmp_path: Path, **config: object) -> Path:
    model = tmp_path / "model"
    shutil.copytree(LLAMA, model)
    values = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**values, **config}))
    return model


@pytest.mark.parametrize(
    "config, words",
    [
        ({"dtype": "bogus"}, ["dtype", "bogus"]),
        ({"dtype": {}}, ["dtype"]),
        ({"num_hidden_layers": 10**9}, ["parameters", "weight files"]),
        ({"hidden_size": 10**7}, ["parameters"]),
    ],
)
def test_a_config_that_would_crash_or_grow_without_bound(tmp_path, config, words):
    assert_one_error(run_bounded("check", _model_with(tmp_path, **config), LEAK, "--format", "json", *FAST), *words)


def test_a_fifo_among_the_weight_files_is_refused(tmp_path):
    model = _model_with(tmp_path)
    os.mkfifo(model / "extra.safetensors")
    assert_one_error(run_bounded("check", model, LEAK, *FAST), "extra.safetensors", "not a regular file")


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_a_special_trl_config_is_refused(tmp_path, special):
    path = tmp_path / "config.json" if special == "fifo" else Path(special)
    if special == "fifo":
        os.mkfifo(path)
    assert_one_error(
        run_bounded("check", LLAMA, CHAT, "--pipeline", "trl", "--trl-config", path, *FAST),
        "TRL config",
        "not a regular file",
    )


@pytest.mark.parametrize(
    "args", [("check", LLAMA, "{fifo}"), ("scan", "{fifo}"), ("check", LLAMA, LEAK, "--roles-from", "{fifo}")]
)
def test_a_fifo_as_data_is_refused(tmp_path, args):
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    result = run_bounded(*[str(a).replace("{fifo}", str(fifo)) for a in args])
    assert_one_error(result, "rows.jsonl", "not a regular file")


def test_a_template_that_renders_tens_of_millions_of_characters(tmp_path):
    model = _model_with(tmp_path)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] * 15000000 }}{% endfor %}"
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    for args in (("roles", model, CHAT), ("check", model, CHAT, *FAST)):
        assert_one_error(run_bounded(*args), "row 0", "characters")


LONG = "a" * 300


@pytest.mark.parametrize(
    "args",
    [
        ("check", f"/tmp/{LONG}", LEAK),
        ("check", LLAMA, f"/tmp/{LONG}.jsonl"),
        ("check", LLAMA, LEAK, "--html", f"/tmp/{LONG}.html"),
        ("check", LLAMA, LEAK, "--output", f"/tmp/{LONG}.json"),
        ("check", LLAMA, LEAK, "--roles-from", f"/tmp/{LONG}.jsonl"),
        ("check", LLAMA, LEAK, "--loss", f"/tmp/{LONG}.py:loss"),
        ("scan", f"/tmp/{LONG}.jsonl"),
    ],
)
def test_a_path_component_over_255_bytes(args):
    assert_one_error_line(invoke(*args, *FAST if args[0] == "check" else ()), "too long")


def test_a_non_utf8_data_path_with_html(tmp_path):
    data = Path(os.fsdecode(bytes(tmp_path) + b"/rows\xff.jsonl"))
    shutil.copy(LEAK_JSONL, data)
    html = tmp_path / "report.html"
    result = invoke("check", LLAMA, data, "--html", html, *FAST)
    assert result.exit_code == 1, result.output
    assert_safe(result)
    html.read_text(encoding="utf-8")


@pytest.mark.parametrize("value", [1.5, "abc", {}, -5, 1e20, True])
def test_scan_refuses_an_end_token_of_the_wrong_type(tmp_path, value):
    model = _model_with(tmp_path, eos_token_id=value)
    assert_one_error_line(invoke("scan", LEAK_JSONL, "--tokenizer", model, "--format", "json"), "eos_token_id")


@pytest.mark.parametrize(
    "source, words",
    [
        (
            "class F(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, x):\n        return x.clone()\n"
            "    @staticmethod\n    def backward(ctx, g):\n        raise ValueError('boom')\n"
            "def loss(logits, labels):\n    return F.apply(logits).mean()\n",
            ["F.backward", "ValueError", "boom"],
        ),
        (
            "class F(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, x):\n        return x.clone()\n"
            "    @staticmethod\n    def backward(ctx, g):\n        return g[:1]\n"
            "def loss(logits, labels):\n    return F.apply(logits).mean()\n",
            ["FBackward", "invalid gradient"],
        ),
    ],
)
@pytest.mark.parametrize("command", ["check", "grads", "verify", "inspect"])
def test_a_loss_whose_backward_fails(tmp_path, source, words, command):
    (tmp_path / "user_loss.py").write_text("import torch\n" + source)
    result = invoke(command, LLAMA, LEAK, "--loss", f"{tmp_path / 'user_loss.py'}:loss")
    assert_one_error_line(result, "backward", *words)


@pytest.mark.parametrize(
    "args, words",
    [
        (("check", LLAMA, LEAK, "--device", "meta"), ["meta"]),
        (("check", LLAMA, LEAK, "--params", "--lr", "inf"), ["--lr", "inf"]),
        (("grads", LLAMA, LEAK, "--lr", "inf"), ["--lr", "inf"]),
        (("scan", LEAK_JSONL, "--tokenizer", LLAMA, "--end-token-id", "480"), ["480", "vocabulary"]),
        (("scan", LEAK_JSONL, "--end-token-id", "-5"), ["-5"]),
    ],
)
def test_remaining_bad_input(args, words):
    assert_one_error_line(invoke(*args, *FAST if args[0] == "check" else ()), *words)


def test_a_zero_byte_jsonl_scanned_is_an_error_not_a_verdict(tmp_path):
    (tmp_path / "rows.jsonl").write_bytes(b"")
    assert_one_error_line(invoke("scan", tmp_path / "rows.jsonl", "--format", "json"), "rows.jsonl", "no rows")


@pytest.mark.parametrize("tokenizer", [False, True])
def test_parquet_ids_beyond_int64_scanned(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"input_ids": pa.array([[1, 2**64 - 1, 3]], type=pa.list_(pa.uint64()))}), path)
    extra = ("--tokenizer", LLAMA) if tokenizer else ()
    assert_one_error_line(invoke("scan", path, *extra, "--format", "json"), "rows.parquet", "18446744073709551615")


def _non_utf8(tmp_path: Path, name: bytes) -> Path:
    return Path(os.fsdecode(bytes(tmp_path) + b"/" + name))


@pytest.mark.parametrize("kind", ["model", "tokenizer", "safetensors", "parquet"])
def test_a_non_utf8_path_a_reader_cannot_open_is_named_as_such(tmp_path, kind):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if kind in ("model", "tokenizer"):
        model = _non_utf8(tmp_path, b"model\xff")
        shutil.copytree(LLAMA, model)
        args = ("check", model, LEAK, *FAST) if kind == "model" else ("scan", LEAK_JSONL, "--tokenizer", model)
    elif kind == "safetensors":
        data = _non_utf8(tmp_path, b"batch\xff.safetensors")
        shutil.copy(LEAK, data)
        args = ("check", LLAMA, data, *FAST)
    else:
        pq.write_table(pa.table({"input_ids": pa.array([[1, 296, 202, 2]])}), tmp_path / "rows.parquet")
        data = _non_utf8(tmp_path, b"rows\xff.parquet")
        (tmp_path / "rows.parquet").rename(data)
        args = ("scan", data)
    line = assert_one_error_line(invoke(*args), "not valid UTF-8", "rename")
    assert "\\udcff" in line and "corrupt" not in line
