"""``gradscope scan --tokenizer`` on raw rows: the batched role derivation against derive row by row, and the scan's
findings against ``check``'s on the same rows with its reference labels."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

import gradscope
from gradscope.cli import app
from gradscope.data.files import read_rows
from gradscope.data.load import load_data, role_spec
from gradscope.data.pipelines import DataOptions
from gradscope.data.roles import RoleSpec, derive, derive_rows, first_past
from gradscope.data.rows import truncate
from gradscope.data.stream import RAW_CHUNK_ROWS
from gradscope.data.tokens import default_end_token_ids
from gradscope.errors import DataError
from gradscope.scan.dataset import scan

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
RAW = FIXTURES / "raw"
LLAMA, GPT2 = "models/tiny-llama-chat", "models/tiny-gpt2"
FILES = ["prompt_completion.jsonl", "chat.jsonl", "tool_chat.jsonl", "chat_prompt_completion.json", "text.jsonl"]
OPTIONS = {
    "default": DataOptions(response_template="\nAnswer:"),
    "cut at 14": DataOptions(response_template="\nAnswer:", max_length=14),
    "cut at 30, keep_end": DataOptions(response_template="\nAnswer:", max_length=30, truncation_mode="keep_end"),
    "last-assistant": DataOptions(train_on="last-assistant", response_template="\nAnswer:"),
}
TOKENIZERS = ("chatml", "gpt2", "llama3", "mistral")  # every tokenizer conftest's fixture_tokenizer loads
runner = CliRunner(env={"COLUMNS": "100"})  # the terminal width rich reads, whatever terminal pytest runs in


def derived_or_error(rows, tokenizer, spec, batched: bool):
    """The RoleRows (as tuples), or the message of the first error, row by row or batched."""
    try:
        out = (
            derive_rows(rows, tokenizer, spec)
            if batched
            else [derive(r, i, tokenizer, spec) for i, r in enumerate(rows)]
        )
    except DataError as err:
        return str(err)
    return [(r.index, r.input_ids, r.roles, r.messages, r.kind) for r in out]


def generated_rows(seed: int, n: int, chat: bool = True) -> list[dict]:
    """Raw rows of every kind, with contents that tokenize oddly (special-token text, empty turns, unicode)."""
    rng = random.Random(seed)
    words = ["sky", "blue", " ", "\n", "<|im_end|>", "Answer:", "é", "2+3", "tac", "", "<|im_start|>assistant\n"]
    say = lambda: "".join(rng.choice(words) for _ in range(rng.randint(0, 6)))  # noqa: E731
    rows = []
    for _ in range(n):
        kind = rng.choice(["pc", "chat", "chat-pc", "text"] if chat else ["pc", "text"])
        turns = [
            {"role": r, "content": say()}
            for r in rng.choice([["user", "assistant"], ["system", "user", "assistant", "user", "assistant"]])
        ]
        if kind == "pc":
            rows.append({"prompt": say(), "completion": say() or "x"})
        elif kind == "chat":
            rows.append({"messages": turns})
        elif kind == "chat-pc":
            rows.append({"prompt": turns[:-1], "completion": turns[-1:]})
        else:
            rows.append({"text": say() + "\nAnswer:" + say()})
    return rows


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_batched_roles_equal_derive_row_by_row(name, fixture_tokenizer):
    """The scan's derivation (all texts of a chunk in one tokenizer call) gives every row derive gives, or the same
    first error."""
    t = fixture_tokenizer(name)
    ends = default_end_token_ids(None, t)
    cases = [read_rows(RAW / f) for f in FILES] + [generated_rows(seed, 60, bool(t.chat_template)) for seed in range(3)]
    compared = 0
    for rows in cases:
        for train_on in ("all-assistant", "last-assistant"):
            spec = RoleSpec(ends, train_on, response_template="\nAnswer:")
            expected = derived_or_error(rows, t, spec, batched=False)
            assert derived_or_error(rows, t, spec, batched=True) == expected
            compared += len(expected) if isinstance(expected, list) else 0
    assert compared > 100


def test_the_tokenizers_compared_are_every_fixture_tokenizer(fixture_tokenizer_dirs):
    """TOKENIZERS parametrizes while pytest collects, so it cannot come from the fixture: it must name all its keys."""
    assert list(TOKENIZERS) == sorted(fixture_tokenizer_dirs)


def test_generated_rows_that_fail_fail_at_the_same_row(fixture_tokenizer):
    rows = [{"prompt": "a", "completion": "b"}] * 5 + [{"text": "no template here"}] + [{"nothing": 1}]
    spec = RoleSpec(frozenset({2}), response_template="\nAnswer:")
    with pytest.raises(DataError, match="row 5: the response template '\\\\nAnswer:' does not occur"):
        derive_rows(rows, fixture_tokenizer("chatml"), spec)
    with pytest.raises(DataError, match="row 7: the row has none of the fields"):
        derive_rows(rows[:5] + rows[6:], fixture_tokenizer("chatml"), spec, first=2)


@pytest.fixture
def checked(fixture_model):
    """``checked(model_name, path, options)``: check's per-row findings with its reference labels, or its error."""

    def run(model_name: str, path, options: DataOptions):
        model, tokenizer = fixture_model(model_name)
        try:
            prepared = load_data(
                path,
                tokenizer=tokenizer,
                model=model,
                options=options,
                end_token_ids=default_end_token_ids(model, tokenizer),
                pad_token_id=tokenizer.pad_token_id,
            )
        except DataError as err:
            return str(err)
        report = gradscope.check_batches(model, prepared.batches, tokenizer=tokenizer, probes=())
        # check prefixes why the loss is NaN when no row of a batch is trained; the rest of the message is the scan's
        return sorted(
            (f.sample, f.check, f.positions, f.message.removeprefix(NAN))
            for f in report.findings
            if f.sample is not None
        )

    return run


NAN = "the loss is NaN, a mean over zero tokens, because "


def scanned(model_name: str, path, options: DataOptions):
    try:
        report = scan(path, tokenizer=FIXTURES / model_name, options=options, examples=100, worst=100)
    except DataError as err:
        return str(err)
    return sorted((f.sample, f.check, f.positions, f.message) for f in report.findings)


@pytest.mark.parametrize("option", sorted(OPTIONS))
@pytest.mark.parametrize("model_name", [LLAMA, GPT2])
def test_scan_finds_what_check_finds_on_raw_fixtures(model_name, option, checked):
    found = []
    for name in FILES:
        expected = checked(model_name, RAW / name, OPTIONS[option])
        assert scanned(model_name, RAW / name, OPTIONS[option]) == expected, name
        found.append(expected)
    if option == "cut at 14":  # truncation does produce findings to compare
        assert any(isinstance(f, list) and f for f in found)


def test_truncation_that_cuts_the_completion_is_reported_as_check_reports_it(checked):
    options = DataOptions(max_length=14)
    report = scan(RAW / "prompt_completion.jsonl", tokenizer=FIXTURES / LLAMA, options=options, examples=10)
    assert report.checks["completion_truncated"]["rows"] >= 1 and report.ok is False
    assert {f.check for f in report.findings} == {"completion_truncated", "no_loss"}
    assert any("Truncation did it" in f.message for f in report.findings if f.check == "no_loss")
    assert sorted((f.sample, f.check, f.positions, f.message) for f in report.findings) == checked(
        LLAMA, RAW / "prompt_completion.jsonl", options
    )
    assert report.summary()["warnings"] == report.checks["completion_truncated"]["rows"]


def test_rows_are_numbered_across_chunks(tmp_path, fixture_tokenizer):
    """Rows past the first chunk: counts and row numbers against derive + truncate row by row."""
    rng = random.Random(5)
    rows = [
        {"prompt": "q" * rng.randint(1, 12), "completion": "a" * rng.randint(1, 12)}
        for _ in range(RAW_CHUNK_ROWS + 300)
    ]
    path = tmp_path / "pc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = fixture_tokenizer("chatml")
    spec = role_spec(t, DataOptions(), None, None)
    cut = [truncate(derive(r, i, t, spec), 10) for i, r in enumerate(rows)]
    report = scan(path, tokenizer=FIXTURES / LLAMA, options=DataOptions(max_length=10), examples=5)
    no_loss = [r.index for r in cut if r.completion_mask.count(1) == 0]
    partial = [r.index for r in cut if r.cut and r.completion_mask.count(1)]
    assert report.rows == len(rows) and report.tokens == sum(len(r.input_ids) for r in cut)
    assert report.trained_tokens == sum(r.completion_mask[1:].count(1) for r in cut)
    assert (report.checks["no_loss"]["rows"], report.checks["no_loss"]["first_rows"]) == (len(no_loss), no_loss[:5])
    assert report.checks["completion_truncated"]["rows"] == len(partial)
    assert report.checks["completion_truncated"]["positions"] == sum(cut[i].cut for i in partial)
    assert max(no_loss + partial) >= RAW_CHUNK_ROWS  # the second chunk holds some


def test_a_bad_row_in_a_later_chunk_is_named_as_check_names_it(tmp_path):
    rows = [{"prompt": "q", "completion": "a"}] * (RAW_CHUNK_ROWS + 5) + [{"prompt": "q", "completion": 3}]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["scan", str(path), "--tokenizer", str(FIXTURES / LLAMA)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"Error: {path}: row {RAW_CHUNK_ROWS + 5}: 'prompt' and 'completion' must both be strings or both be "
        "message lists"
    )


def test_raw_rows_without_a_tokenizer_are_one_error_line():
    result = runner.invoke(app, ["scan", str(RAW / "chat.jsonl")])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    assert "rows hold raw text (messages), not token ids" in result.stderr and "--tokenizer DIR" in result.stderr


def test_raw_scan_json_and_exit_codes():
    args = ["scan", str(RAW / "chat.jsonl"), "--tokenizer", str(FIXTURES / LLAMA), "--format", "json"]
    clean = runner.invoke(app, args)
    assert clean.exit_code == 0, clean.stderr
    out = json.loads(clean.stdout)
    assert out["kind"] == "scan" and out["source"]["format"] == "jsonl"
    assert out["source"]["raw"] == {
        "kinds": ["chat"],
        "train_on": "all-assistant",
        "response_template": None,
        "instruction_template": None,
        "max_length": None,
        "truncation_mode": "keep_start",
    }
    assert out["summary"]["rows"] == 3 and out["summary"]["ok"] is True
    # rows whose completion is partly cut: a warning (exit 0, 1 with --strict); wholly cut: no_loss (exit 1)
    partial = runner.invoke(app, [*args, "--max-length", "40"])
    summary = json.loads(partial.stdout)["summary"]
    assert (partial.exit_code, summary["checks_failed"], summary["errors"]) == (0, ["completion_truncated"], 0)
    assert runner.invoke(app, [*args, "--max-length", "40", "--strict"]).exit_code == 1
    text = runner.invoke(app, [*args[:-2], "--max-length", "40"], env={"COLUMNS": "120"})
    assert text.stdout.startswith("! warnings in 1 of 3 row(s): completion_truncated ×1\n")  # rows that fail
    assert runner.invoke(app, [*args, "--max-length", "5"]).exit_code == 1


def test_first_past_equals_a_plain_scan_on_any_offsets():
    rng = random.Random(7)
    for _ in range(3000):
        ends = sorted(rng.randint(0, 30) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.5 and ends:  # special tokens at (0, 0), overlapping pieces: ends that do not grow
            ends[rng.randrange(len(ends))] = rng.randint(0, 30)
        boundary = rng.randint(-1, 31)
        assert first_past(ends, boundary) == next((i for i, e in enumerate(ends) if e > boundary), len(ends)), (
            ends,
            boundary,
        )


@pytest.mark.parametrize("fmt", ["parquet", "datasets", "json array"])
def test_raw_rows_in_every_format_scan_alike(tmp_path, fmt, checked):
    import datasets

    rows = read_rows(RAW / "chat.jsonl") + read_rows(RAW / "tool_chat.jsonl")
    path = {"parquet": tmp_path / "rows.parquet", "datasets": tmp_path / "rows", "json array": tmp_path / "rows.json"}[
        fmt
    ]
    if fmt == "json array":
        path.write_text(json.dumps(rows))
    else:
        dataset = datasets.Dataset.from_list(rows)
        dataset.to_parquet(str(path)) if fmt == "parquet" else dataset.save_to_disk(str(path))
    options = DataOptions(max_length=30)
    report = scan(path, tokenizer=FIXTURES / LLAMA, options=options, examples=10)
    assert report.rows == 4 and report.source["raw"]["kinds"] == ["chat"]
    assert sorted((f.sample, f.check, f.positions, f.message) for f in report.findings) == checked(LLAMA, path, options)
    assert report.findings  # the maximum length cuts completions: there is something to compare


def with_bos():
    """The ChatML fixture tokenizer made to add a BOS token, as Llama's do (no fixture tokenizer adds one)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(FIXTURES / LLAMA)
    bos = t.convert_tokens_to_ids("<|im_start|>")
    t.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)]
    )
    assert t("a")["input_ids"] == [bos, *t("a", add_special_tokens=False)["input_ids"]]
    return t


def splitting_special_tokens():
    """The ChatML fixture tokenizer with split_special_tokens=True, its backend not yet told (transformers tells it
    at each call)."""
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(FIXTURES / LLAMA, split_special_tokens=True)
    t.backend_tokenizer.encode_special_tokens = False
    return t


VARIANTS = {"chatml with BOS": with_bos, "chatml splitting special tokens": splitting_special_tokens}


@pytest.mark.parametrize("name", [*sorted(TOKENIZERS), *VARIANTS])
def test_encoder_gives_what_the_tokenizers_own_call_gives(name, fixture_tokenizer):
    """The Encoder may call the Rust backend directly: its ids and offsets are those of ``tokenizer(text)``."""
    from gradscope.data.roles import Encoder

    t = VARIANTS[name]() if name in VARIANTS else fixture_tokenizer(name)
    texts = [json.dumps(r) for r in generated_rows(9, 40, chat=False)] + ["", " ", "<|im_end|>\n", "é\n\nx  y"]
    encoder = Encoder(t)
    encoder.prepare(texts, texts)
    for text in texts:
        plain, whole = t(text, add_special_tokens=False), t(text, return_offsets_mapping=True)
        assert encoder.ids(text) == plain["input_ids"]
        assert encoder.ids_offsets(text) == (whole["input_ids"], [tuple(o) for o in whole["offset_mapping"]])
