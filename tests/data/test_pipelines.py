"""Pipelines from raw rows to checked batches: gradscope's reference masking, the user's collator, TRL.

The TRL cases build SFTTrainer's own batches on the tiny Llama fixture (vocabulary fits its ChatML tokenizer) and
check that gradscope's verdict is what TRL's labels really do: clean, or prompt_leak on exactly the prompt.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import gradscope
from gradscope.constants import CUT_KEY, ROLE_CODES_KEY, ROLE_NAMES, ROW_KEY, UNKNOWN
from gradscope.data.batch import COMPLETION
from gradscope.data.load import load_data
from gradscope.data.pipelines import DataOptions, attach_roles, reference_batches, role_rows
from gradscope.data.roles import RoleSpec
from gradscope.data.tokens import default_end_token_ids
from gradscope.data.trl import require_trl
from gradscope.errors import DataError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
RAW = FIXTURES / "raw"
LLAMA, GPT2 = "models/tiny-llama-chat", "models/tiny-gpt2"
pytestmark = pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")


def rows_of(name: str) -> list[dict]:
    return [json.loads(line) for line in (RAW / name).read_text().splitlines()]


@pytest.fixture
def derived(fixture_model):
    """``derived(name="chat.jsonl", model=LLAMA)``: the raw fixture file's role rows with that model's tokenizer."""

    def derive(name: str = "chat.jsonl", model: str = LLAMA):
        _, tok = fixture_model(model)
        return role_rows(rows_of(name), tok, RoleSpec(default_end_token_ids(None, tok)))

    return derive


@pytest.fixture
def checked(fixture_model):
    """``checked(path, model=LLAMA, batch_size=3, **options) -> (prepared, report)``: the file loaded through the
    pipeline the options name and checked."""

    def check(path, model: str = LLAMA, batch_size: int = 3, **options):
        if options.get("pipeline") == "trl":
            pytest.importorskip("trl")  # the [trl] extra, which CI installs
        m, tok = fixture_model(model)
        prepared = load_data(
            path,
            tokenizer=tok,
            model=m,
            batch_size=batch_size,
            options=DataOptions(**options),
            pad_token_id=tok.pad_token_id,
        )
        report = gradscope.check_batches(m, prepared.batches, tokenizer=tok)
        return prepared, report

    return check


def pairs(report):
    return sorted((f.check, f.sample) for f in report.findings)


# --- reference masking ------------------------------------------------------------------------------------------


def test_reference_batch_labels_exactly_the_completion(derived):
    rows = derived()
    [batch] = reference_batches(rows, 3, pad_token_id=3)
    for b, row in enumerate(rows):
        n = len(row.input_ids)
        assert batch["input_ids"][b, :n].tolist() == row.input_ids
        assert batch[ROLE_CODES_KEY][b, :n].tolist() == row.roles
        expected = [i if r == COMPLETION else -100 for i, r in zip(row.input_ids, row.roles, strict=True)]
        assert batch["labels"][b].tolist() == expected + [-100] * (batch["labels"].shape[1] - n)
        assert batch["attention_mask"][b].tolist() == [1] * n + [0] * (batch["labels"].shape[1] - n)
    assert batch[CUT_KEY].tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("model", "data", "options"),
    [
        (LLAMA, "chat.jsonl", {}),
        (LLAMA, "chat_prompt_completion.json", {}),
        (LLAMA, "prompt_completion.jsonl", {}),
        (GPT2, "prompt_completion.jsonl", {}),
        (GPT2, "text.jsonl", {"response_template": "Answer:"}),
    ],
)
def test_reference_masking_checks_clean_and_trains_exactly_the_completion(model, data, options, fixture_model, checked):
    prepared, report = checked(RAW / data, model, **options)
    assert report.findings == [] and report.notes == []
    assert prepared.data["pipeline"] == "reference"
    _, tok = fixture_model(model)
    spec = RoleSpec(default_end_token_ids(None, tok), response_template=options.get("response_template"))
    for sample, row in zip(
        report.samples,
        role_rows(rows_of(data) if data.endswith("l") else json.loads((RAW / data).read_text()), tok, spec),
        strict=True,
    ):
        real = [t for t in sample.tokens if t.role != "pad"]
        assert [t.token_id for t in real] == row.input_ids
        assert [t.role for t in real] == [ROLE_NAMES[r] for r in row.roles]
        assert sample.trained_positions == [t for t, r in enumerate(row.roles) if r == COMPLETION]  # by the gradient


def test_truncated_reference_reports_completion_truncated_and_no_loss_by_truncation(derived, checked):
    _, report = checked(RAW / "chat.jsonl", batch_size=1, max_length=20)
    assert pairs(report) == [("completion_truncated", 1), ("no_loss", 0), ("no_loss", 2)]
    by = {(f.check, f.sample): f for f in report.findings}
    rows = derived()
    cut = rows[1].roles.count(COMPLETION) - rows[1].roles[:20].count(COMPLETION)
    assert by[("completion_truncated", 1)].severity == "warning"
    assert (
        f"cut {cut} of the {rows[1].roles.count(COMPLETION)} completion tokens"
        in by[("completion_truncated", 1)].message
    )
    assert (
        f"Truncation did it: the maximum length cut all {rows[0].roles.count(COMPLETION)} completion tokens"
        in by[("no_loss", 0)].message
    )


# --- matching derived roles onto another pipeline's batch -------------------------------------------------------


def test_attach_roles_to_left_padded_and_padding_free_batches(derived):
    rows = derived()
    pad = 3
    width = max(len(r.input_ids) for r in rows)
    left = {
        "input_ids": torch.tensor([[pad] * (width - len(r.input_ids)) + r.input_ids for r in rows]),
        "attention_mask": torch.tensor([[0] * (width - len(r.input_ids)) + [1] * len(r.input_ids) for r in rows]),
    }
    out, used = attach_roles(left, rows, pad, strict=True)
    for b, r in enumerate(rows):
        assert out[ROLE_CODES_KEY][b, width - len(r.input_ids) :].tolist() == r.roles
    assert used == {0, 1, 2} and out[ROW_KEY].tolist() == [0, 1, 2]
    flat = {  # TRL's padding-free layout: one row, position_ids restart at each document, padded at the end
        "input_ids": torch.tensor([sum((r.input_ids for r in rows), []) + [pad, pad]]),
        "position_ids": torch.tensor([sum((list(range(len(r.input_ids))) for r in rows), []) + [0, 0]]),
    }
    out, used = attach_roles(flat, rows, pad, strict=True)
    assert out[ROLE_CODES_KEY][0].tolist() == sum((r.roles for r in rows), []) + [UNKNOWN, UNKNOWN]
    assert ROW_KEY not in out  # one batch row holds three data rows


def test_attach_roles_counts_truncation_and_refuses_foreign_tokens(derived):
    rows = derived()
    row = rows[0]
    kept = row.input_ids[-12:]  # keep_end
    out, _ = attach_roles({"input_ids": torch.tensor([kept])}, rows, 3, strict=True)
    assert out[ROLE_CODES_KEY][0].tolist() == row.roles[-12:]
    assert out[CUT_KEY].tolist() == [row.roles.count(COMPLETION) - row.roles[-12:].count(COMPLETION)]
    foreign = {"input_ids": torch.tensor([[9] + row.input_ids])}  # a BOS the derivation does not have
    with pytest.raises(
        DataError,
        match=r"batch row 0 from position 0 does not hold the tokens "
        r"gradscope derived for data row 0: they first differ at token 0 \(9 in the batch, 1 from",
    ):
        attach_roles(foreign, rows, 3, strict=True)
    loose, used = attach_roles(foreign, rows, 3, strict=False)
    assert (loose[ROLE_CODES_KEY] == UNKNOWN).all() and used == set()


# --- the user's collator ----------------------------------------------------------------------------------------


def test_collator_that_trains_the_prompt_is_caught_and_a_correct_one_passes(checked):
    collators = RAW / "collators.py"
    _, leak = checked(RAW / "chat.jsonl", collate=f"{collators}:labels_copy_input_ids", collate_input="tokens")
    assert pairs(leak) == [("prompt_leak", 0), ("prompt_leak", 1), ("prompt_leak", 2)]
    prepared, clean = checked(RAW / "chat.jsonl", collate=f"{collators}:mask_prompt", collate_input="tokens")
    assert clean.findings == [] and prepared.data["pipeline"] == "collate"


def test_collator_on_raw_rows_with_the_chat_template_passes(tmp_path, checked):
    path = tmp_path / "mine.py"
    path.write_text(
        "import torch\n"
        "from transformers import AutoTokenizer\n"
        f"TOK = AutoTokenizer.from_pretrained({str(FIXTURES / LLAMA)!r})\n"
        "def collate(rows):\n"
        "    out = [TOK.apply_chat_template(r['messages'], return_dict=True, "
        "return_assistant_tokens_mask=True) for r in rows]\n"
        "    n = max(len(o['input_ids']) for o in out)\n"
        "    ids = [o['input_ids'] + [3] * (n - len(o['input_ids'])) for o in out]\n"
        "    labels = [[i if m else -100 for i, m in zip(o['input_ids'], o['assistant_masks'])] "
        "+ [-100] * (n - len(o['input_ids'])) for o in out]\n"
        "    mask = [[1] * len(o['input_ids']) + [0] * (n - len(o['input_ids'])) for o in out]\n"
        "    return {'input_ids': ids, 'labels': labels, 'attention_mask': mask}\n"
    )
    _, report = checked(RAW / "chat.jsonl", collate=f"{path}:collate")
    assert report.findings == []


PAD_IS_EOS_COLLATOR = """
import torch
PAD = 0  # tiny-gpt2: pad == eos == <|endoftext|>

def _batch(rows, keep):
    rows = [{"input_ids": r["input_ids"][:keep(r)], "completion_mask": r["completion_mask"][:keep(r)]} for r in rows]
    width = max(len(r["input_ids"]) for r in rows) + 2
    ids = torch.tensor([r["input_ids"] + [PAD] * (width - len(r["input_ids"])) for r in rows])
    trained = torch.tensor([r["completion_mask"] + [0] * (width - len(r["input_ids"])) for r in rows]).bool()
    mask = (ids != PAD).long()  # the pad == eos bug: the real EOS is taken for padding
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.where(trained & mask.bool(), ids, -100)}

def by_id(rows):
    return _batch(rows, lambda r: len(r["input_ids"]))

def by_id_cut(rows):  # and a truncation that really cuts the completion's last token and its EOS
    return _batch(rows, lambda r: len(r["input_ids"]) - 2)
"""


def test_pad_equal_eos_collator_is_eos_untrained_without_a_truncation_that_did_not_happen(tmp_path, derived, checked):
    path = tmp_path / "pad_is_eos.py"
    path.write_text(PAD_IS_EOS_COLLATOR)
    _, report = checked(RAW / "prompt_completion.jsonl", GPT2, collate=f"{path}:by_id", collate_input="tokens")
    assert pairs(report) == [("eos_untrained", i) for i in range(3)]
    assert all("pad_token == eos_token" in f.message for f in report.findings)
    _, cut = checked(RAW / "prompt_completion.jsonl", GPT2, collate=f"{path}:by_id_cut", collate_input="tokens")
    assert ("completion_truncated", 0) in pairs(cut)
    rows = derived("prompt_completion.jsonl", GPT2)
    for f in cut.findings:
        if f.check == "completion_truncated":  # the last completion token and the EOS: 2 of them
            assert f"cut 2 of the {rows[f.sample].roles.count(COMPLETION)} completion tokens" in f.message


def test_collator_errors_are_bad_input(tmp_path, checked):
    path = tmp_path / "broken.py"
    path.write_text("def collate(rows):\n    raise KeyError('input_ids')\n\ndef nothing(rows):\n    return [1]\n")
    with pytest.raises(DataError, match=r"rows 0–2: the collator failed: KeyError"):
        checked(RAW / "chat.jsonl", collate=f"{path}:collate")
    with pytest.raises(DataError, match="must return a dict with 'input_ids'"):
        checked(RAW / "chat.jsonl", collate=f"{path}:nothing")
    with pytest.raises(DataError, match="`collate`"):
        checked(RAW / "chat.jsonl", collate="justaname")


# --- TRL --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "options", "leak"),
    [
        ("prompt_completion.jsonl", {}, False),  # completion_only_loss defaults to True for prompt/completion rows
        ("prompt_completion.jsonl", {"completion_only_loss": False}, True),
        ("chat.jsonl", {"assistant_only_loss": True}, False),
        ("chat.jsonl", {}, True),  # conversations train every token by default
        ("chat_prompt_completion.json", {}, False),
        ("chat_prompt_completion.json", {"completion_only_loss": False}, True),
    ],
)
def test_trl_labels_are_clean_or_leak_the_prompt(data, options, leak, checked):
    prepared, report = checked(RAW / data, pipeline="trl", trl_options=options)
    assert prepared.data["pipeline"] == "trl" and report.notes == []
    assert pairs(report) == ([("prompt_leak", i) for i in range(3)] if leak else [])
    for f in report.findings:
        sample = report.samples[f.sample]
        prompt = [t.position for t in sample.tokens if t.role == "prompt" and t.position > 0]
        assert f.positions == prompt  # every prompt token, nothing else
    for sample in report.samples:  # the completion is always trained; template glue may or may not be
        assert all(t.trained for t in sample.tokens if t.role == "completion")


def test_trl_conversational_prompt_completion_trains_the_glue_after_the_closing_token(checked):
    _, report = checked(RAW / "chat_prompt_completion.json", pipeline="trl")
    last = report.samples[0].tokens[-1]
    assert (last.text, last.role, last.trained) == ("\n", None, True)  # trained by TRL, not judged by gradscope


def test_trl_truncation_drops_rows_and_warns_on_cut_completions(checked):
    prepared, report = checked(
        RAW / "chat.jsonl", pipeline="trl", max_length=20, trl_options={"assistant_only_loss": True}
    )
    assert pairs(report) == [("completion_truncated", 1)]  # sample indices are data rows
    assert [s.index for s in report.samples] == [1]
    assert prepared.notes == [
        "TRL's data preparation left out row(s) 0, 2: it drops rows that truncation to max_length=20 leaves without "
        "a trained token, so they train nothing"
    ]


@pytest.mark.parametrize("options", [{"packing": True, "max_length": 64}, {"padding_free": True, "max_length": None}])
def test_trl_packed_and_padding_free_batches_get_their_roles(options, derived, checked):
    prepared, report = checked(RAW / "chat.jsonl", pipeline="trl", trl_options={"assistant_only_loss": True, **options})
    assert report.findings == [] and report.notes == []
    codes = torch.cat([b[ROLE_CODES_KEY].flatten() for b in prepared.batches])
    rows = derived()
    assert int((codes == COMPLETION).sum()) == sum(r.roles.count(COMPLETION) for r in rows)
    trained = sum(len(s.trained_positions) for s in report.samples)
    assert trained == sum(r.roles.count(COMPLETION) for r in rows)


def test_trl_assistant_only_loss_without_generation_markers_is_a_clear_error(fixture_model, checked):
    model, tok = fixture_model(LLAMA)
    plain = tok.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    tok.chat_template, saved = plain, tok.chat_template
    try:
        with pytest.raises(DataError) as err:
            checked(RAW / "chat.jsonl", pipeline="trl", trl_options={"assistant_only_loss": True})
    finally:
        tok.chat_template = saved
    message = str(err.value)
    assert "assistant_only_loss=True needs a chat template with {% generation %} markers" in message
    assert "no_loss" in message and "TRL says:" in message


def test_trl_leaves_the_model_as_it_was(fixture_model, checked):
    model, tok = fixture_model(LLAMA)
    pad, eos = model.config.pad_token_id, model.config.eos_token_id
    checked(RAW / "prompt_completion.jsonl", pipeline="trl")
    assert "forward" not in model.__dict__  # TRL's fused LM head patch is undone
    assert (model.config.pad_token_id, model.config.eos_token_id) == (pad, eos)


def test_trl_options_and_missing_trl_are_clear_errors(tmp_path, monkeypatch, checked):
    config = tmp_path / "sft.json"
    config.write_text('{"no_such_option": 1}')
    with pytest.raises(DataError, match=r"sft.json: SFTConfig rejects these options: .*no_such_option"):
        checked(RAW / "chat.jsonl", pipeline="trl", trl_config=config)
    monkeypatch.setitem(sys.modules, "trl", None)
    with pytest.raises(DataError, match=r"`pipeline` trl needs TRL and datasets .*install the trl extra"):
        require_trl()


def test_chat_rows_check_clean_on_gpt2_with_a_chat_template(fixture_model, checked):
    # GPT-2 has no chat template of its own; the fixture's BPE holds the ChatML tokens, so borrow the Llama one.
    _, llama_tok = fixture_model(LLAMA)
    _, tok = fixture_model(GPT2)
    tok.chat_template = llama_tok.chat_template
    try:
        _, report = checked(RAW / "chat.jsonl", GPT2)
    finally:
        tok.chat_template = None
    assert report.findings == [] and report.notes == []
    for sample in report.samples:
        assert sample.trained_positions == [t.position for t in sample.tokens if t.role == "completion"]


def test_tokenized_rows_in_json_load_as_a_batch_and_refuse_raw_pipelines(tmp_path):
    rows = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [-100, 5]}]
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(rows))
    prepared = load_data(path, tokenizer=None, batch_size=2, pad_token_id=0)
    assert prepared.data == {"source": str(path), "format": "tokens"}
    [batch] = prepared.batches
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [-100, 5, -100]]
    with pytest.raises(DataError, match="already tokenized"):
        load_data(path, tokenizer=None, options=DataOptions(pipeline="trl"))


def test_trl_padding_free_batches_are_checked_as_trl_calls_the_model(fixture_model, checked):
    """TRL's SFTTrainer passes use_cache=False with every batch; the model's own config (use_cache=True) is put back."""
    model, _ = fixture_model(LLAMA)
    assert model.config.use_cache is True
    prepared, report = checked(
        RAW / "chat.jsonl",
        pipeline="trl",
        trl_options={"assistant_only_loss": True, "padding_free": True, "max_length": None},
    )
    assert model.config.use_cache is True
    assert all(b["use_cache"] is False for b in prepared.batches)
    assert report.probes["packing"].ran and report.findings == []
    leaky = gradscope.check_batches(model, [{k: v for k, v in b.items() if k != "use_cache"} for b in prepared.batches])
    assert {f.check for f in leaky.findings} == {"cross_document_leak"}  # the config's KV cache breaks isolation


def _trl_qwen25_template() -> str:
    config = json.loads((FIXTURES / "tokenizers" / "qwen2.5-trl-chat" / "tokenizer_config.json").read_text())
    return config["chat_template"]


@pytest.mark.parametrize("broken", [False, True])
def test_trl_qwen25_training_template_is_clean_and_a_block_over_the_header_leaks_it(broken, fixture_model, checked):
    """TRL's Qwen2.5 training template puts the header's '\\n' inside {% generation %}: TRL trains it, which is not a
    prompt leak (the generation prompt holds it). Opening the block before '<|im_start|>assistant' trains the header."""
    _, tok = fixture_model(LLAMA)
    template = _trl_qwen25_template()
    if broken:
        template = template.replace(
            "{{ '<|im_start|>assistant' }}{% generation %}", "{% generation %}{{ '<|im_start|>assistant' }}"
        )
        assert template != _trl_qwen25_template()
    tok.chat_template, saved = template, tok.chat_template
    try:
        prepared, report = checked(RAW / "chat.jsonl", pipeline="trl", trl_options={"assistant_only_loss": True})
    finally:
        tok.chat_template = saved
    if not broken:
        assert report.findings == [] and report.notes == []
        for sample in report.samples:
            header = [t for t in sample.tokens if t.text == "\n" and t.role is None and t.trained]
            assert header  # TRL trains the glue; gradscope does not judge it
        return
    assert pairs(report) == [("prompt_leak", i) for i in range(3)]
    start = tok.convert_tokens_to_ids("<|im_start|>")
    for f in report.findings:
        tokens = report.samples[f.sample].tokens
        headers = [t.position for t in tokens if t.token_id == start and tokens[t.position + 1].text == "assistant"]
        assert f.positions == sorted(p + d for p in headers for d in (0, 1))
