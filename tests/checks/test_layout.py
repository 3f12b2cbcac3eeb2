"""The layout checks and the closing-token rule, on hand-built samples whose verdict is known."""

from __future__ import annotations

import torch

from gradscope.checks.layout import (
    bos_duplicated,
    bos_missing,
    packed_without_boundaries,
    pads_attended,
    prefill_trained,
)
from gradscope.checks.masking import check_sample
from gradscope.checks.sample import SampleView, closing_positions, padding
from gradscope.constants import COMPLETION, PAD, PROMPT, UNKNOWN

P, C, X, U = PROMPT, COMPLETION, PAD, UNKNOWN
IM_END, ENDOFTEXT, PAD_ID, BOS = 2, 0, 3, 1


def view(
    ids,
    roles,
    trained,
    *,
    pad=PAD_ID,
    bos=None,
    ends=(IM_END, ENDOFTEXT),
    starts=(),
    known=True,
    adds_bos=False,
    prefills=(),
):
    ids = torch.tensor(ids)
    trained = torch.tensor(trained, dtype=torch.bool)
    return SampleView(
        index=0,
        input_ids=ids,
        roles=torch.tensor(roles),
        trained=trained,
        target_id=torch.where(trained, ids, -1),
        texts=[f"t{i}" for i in ids.tolist()],
        end_token_ids=frozenset(ends),
        pad_token_id=pad,
        document_starts=frozenset(starts),
        bos_token_id=bos,
        boundaries_known=known,
        bos_added=adds_bos,
        prefills=prefills,
    )


def names(s):
    return [(f.check, f.positions) for f in check_sample(s)]


def test_the_closing_token_is_the_end_token_the_span_holds_not_a_pad_after_it():
    # A peer pipeline's span "content <|im_end|> \n", then <|endoftext|> padding with no 2D mask (it looks real).
    ids = [10, 11, 12, IM_END, 20, ENDOFTEXT, ENDOFTEXT]
    s = view(ids, [P, C, C, C, C, U, U], [0, 1, 1, 1, 1, 0, 0], pad=ENDOFTEXT)
    assert closing_positions(s) == [3]
    assert names(s) == []


def test_a_pad_never_closes_a_span_unless_it_is_the_eos_masked_as_padding():
    ids = [10, 11, 12, PAD_ID, PAD_ID]
    assert closing_positions(view(ids, [P, C, C, X, X], [0, 1, 1, 0, 0], ends=(IM_END, PAD_ID), pad=None)) == []
    # pad == eos and the span runs into padding: the first pad was its EOS (attention_mask = ids != pad).
    s = view(ids, [P, C, C, X, X], [0, 1, 1, 0, 0], ends=(IM_END, PAD_ID))
    assert closing_positions(s) == [3]
    [(check, positions)] = names(s)
    assert (check, positions) == ("eos_untrained", [3])
    assert "ids != pad" in check_sample(s)[0].message
    # The same without roles: the gradient shows the last trained token running into the masked EOS.
    unknown = view(ids, [U, U, U, X, X], [0, 1, 1, 0, 0], ends=(IM_END, PAD_ID))
    assert closing_positions(unknown) == [3]
    # A trained real EOS followed by pads that are EOS too: the EOS closes, the pads close nothing.
    clean = view([10, 11, PAD_ID, PAD_ID, PAD_ID], [U, U, U, X, X], [0, 1, 1, 0, 0], ends=(PAD_ID,))
    assert closing_positions(clean) == [2] and names(clean) == []


def test_without_roles_pads_after_a_run_that_holds_its_end_token_close_nothing():
    """Packed rows with no 2D mask (a 4D mask, or padding marked 1): Qwen's <|endoftext|> pads the row after the last
    document and is an end token too, while <|im_end|> ends the turn. The trained run "content <|im_end|> \\n" holds
    its closing token; the pad after it is padding, not an untrained EOS."""
    #       0   1   2   3       4   5          6          7
    ids = [10, 11, 12, IM_END, 20, ENDOFTEXT, ENDOFTEXT, ENDOFTEXT]
    clean = view(ids, [U] * 8, [0, 1, 1, 1, 1, 0, 0, 0], pad=ENDOFTEXT)
    assert closing_positions(clean) == [3] and names(clean) == []
    # The broken twin: <|im_end|> (and the "\\n" after it) untrained; the finding names it, and not as pad == eos.
    broken = view(ids, [U] * 8, [0, 1, 1, 0, 0, 0, 0, 0], pad=ENDOFTEXT)
    [finding] = check_sample(broken)
    assert (finding.check, finding.positions) == ("eos_untrained", [3])
    assert "pad_token == eos_token" not in finding.message
    # With roles the same: the span's own <|im_end|> closes it, whatever follows.
    roles = [P, C, C, C, U, U, U, U]
    assert closing_positions(view(ids, roles, [0, 1, 1, 1, 1, 0, 0, 0], pad=ENDOFTEXT)) == [3]


def test_the_trailing_run_of_untrained_pad_ids_is_padding_without_a_mask():
    ids = [10, 11, ENDOFTEXT, 12, ENDOFTEXT, ENDOFTEXT]
    s = view(ids, [U] * 6, [0, 1, 0, 1, 0, 0], pad=ENDOFTEXT)
    assert padding(s).tolist() == [False, False, False, False, True, True]  # an inner pad id is not padding
    # pad == eos without a 2D mask (transformers' LM collator: labels[ids == pad] = -100): the first pad after a run
    # holding no end token is the real EOS, masked; still reported.
    gpt2 = view([10, 11, 12, ENDOFTEXT, ENDOFTEXT], [U] * 5, [0, 1, 1, 0, 0], pad=ENDOFTEXT, ends=(ENDOFTEXT,))
    [finding] = check_sample(gpt2)
    assert (finding.check, finding.positions) == ("eos_untrained", [3])
    assert "pad_token == eos_token" in finding.message


def test_turn_end_untrained_when_every_turn_end_but_the_last_is_untrained():
    #       0   1   2       3   4   5   6       7
    ids = [10, 11, IM_END, 12, 13, 14, IM_END, 15]
    roles = [P, C, C, P, P, C, C, U]
    s = view(ids, roles, [0, 1, 0, 0, 0, 1, 1, 0])
    assert names(s) == [("turn_end_untrained", [2])]
    assert "earlier assistant turn" in check_sample(s)[0].message
    # Every end missed, or only the last: eos_untrained.
    assert names(view(ids, roles, [0, 1, 0, 0, 0, 1, 0, 0])) == [("eos_untrained", [2, 6])]
    assert names(view(ids, roles, [0, 1, 1, 0, 0, 1, 0, 0])) == [("eos_untrained", [6])]


def test_pads_attended_reads_a_leading_run_of_pads_the_mask_calls_real():
    ids = [PAD_ID, PAD_ID, 10, 11, IM_END]
    assert pads_attended(view(ids, [P, P, P, C, C], [0, 0, 0, 1, 1])).positions == [0, 1]
    assert pads_attended(view(ids, [X, X, P, C, C], [0, 0, 0, 1, 1])) is None  # masked: fine
    assert pads_attended(view(ids, [P, P, P, C, C], [0, 0, 0, 1, 1], pad=IM_END)) is None  # pad is an end token
    assert pads_attended(view([PAD_ID] * 3, [P, P, P], [0, 0, 0])) is None  # nothing but pads


def test_bos_duplicated_after_left_padding():
    s = view([PAD_ID, BOS, BOS, 10, IM_END], [X, P, P, C, C], [0, 0, 0, 1, 1], bos=BOS)
    assert bos_duplicated(s).positions == [1, 2]
    assert bos_duplicated(view([BOS, 10, BOS, 11], [P, P, P, C], [0, 0, 0, 1], bos=BOS)) is None
    assert bos_duplicated(view([BOS, BOS, 10], [P, P, C], [0, 0, 1])) is None  # no BOS known


def test_bos_missing_when_the_tokenizer_adds_one_and_the_row_lacks_it():
    lacking = view([10, 11, IM_END], [P, C, C], [0, 1, 1], bos=BOS, adds_bos=True)
    found = bos_missing(lacking)
    assert (found.check, found.positions) == ("bos_missing", [0])
    assert "add_special_tokens" in found.message and "--" not in found.message
    assert names(lacking) == [("bos_missing", [0])]
    assert bos_missing(view([BOS, 10, 11, IM_END], [P, P, C, C], [0, 0, 1, 1], bos=BOS, adds_bos=True)) is None
    # A tokenizer that adds no BOS (GPT-2, ChatML/Qwen) says nothing about it, even with a BOS id known.
    assert bos_missing(view([10, 11, IM_END], [P, C, C], [0, 1, 1], bos=BOS)) is None
    # Left padding, masked or attended: the first real token is the BOS.
    assert (
        bos_missing(view([PAD_ID, PAD_ID, BOS, 10, IM_END], [X, X, P, C, C], [0, 0, 0, 1, 1], bos=BOS, adds_bos=True))
        is None
    )
    attended = view([PAD_ID, PAD_ID, BOS, 10, IM_END], [P, P, P, C, C], [0, 0, 0, 1, 1], bos=BOS, adds_bos=True)
    assert bos_missing(attended) is None and names(attended) == [("pads_attended", [0, 1])]
    assert bos_missing(view([PAD_ID, 10, IM_END], [X, P, C], [0, 0, 1], bos=BOS, adds_bos=True)).positions == [1]


def test_bos_missing_reads_every_declared_packed_document():
    ids = [BOS, 10, IM_END, BOS, 11, IM_END, 12, 13]
    roles = [P, C, C, P, C, C, P, C]
    assert bos_missing(view(ids, roles, [0, 1, 1, 0, 1, 1, 0, 1], bos=BOS, adds_bos=True, starts=(3,))) is None
    missing = view(ids, roles, [0, 1, 1, 0, 1, 1, 0, 1], bos=BOS, adds_bos=True, starts=(3, 6))
    assert bos_missing(missing).positions == [6]
    assert "packed documents" in bos_missing(missing).message


def test_packed_without_boundaries_finds_inner_documents_not_declared():
    # BOS distinct from EOS (Llama 3): a BOS after real tokens starts a document.
    ids = [BOS, 10, IM_END, BOS, 11, IM_END, BOS, 12]
    roles = [P] * 8
    assert packed_without_boundaries(view(ids, roles, [0] * 8, bos=BOS)).positions == [3, 6]
    assert packed_without_boundaries(view(ids, roles, [0] * 8, bos=BOS, starts=(3, 6))) is None  # declared
    assert packed_without_boundaries(view(ids, roles, [0] * 8, bos=BOS, known=False)) is None  # not read
    # BOS == EOS (GPT-2): the token after an inner <|endoftext|> starts a document; one leading BOS, and trailing
    # padding, do not.
    gpt2 = [ENDOFTEXT, 10, 11, ENDOFTEXT, 12, 13, ENDOFTEXT, ENDOFTEXT]
    s = view(gpt2, [P, P, C, C, P, C, C, X], [0] * 8, pad=ENDOFTEXT, bos=ENDOFTEXT)
    assert packed_without_boundaries(s).positions == [4]


def test_media_tokens_trained_whatever_their_role_and_not_as_prompt_leak():
    image = 40
    ids = [10, image, image, 11, 12, IM_END]
    roles = [P, P, P, P, C, C]
    s = SampleView(
        index=0,
        input_ids=torch.tensor(ids),
        roles=torch.tensor(roles),
        trained=torch.tensor([0, 1, 1, 0, 1, 1]).bool(),
        target_id=torch.tensor([-1, image, image, -1, 12, IM_END]),
        texts=["a", "<image>", "<image>", "b", "c", "e"],
        end_token_ids=frozenset({IM_END}),
        pad_token_id=PAD_ID,
        media_token_ids=frozenset({image}),
    )
    assert names(s) == [("media_tokens_trained", [1, 2])]
    assert "'<image>'" in check_sample(s)[0].message
    from dataclasses import replace

    untrained = replace(s, trained=torch.tensor([0, 0, 0, 0, 1, 1]).bool())
    assert names(untrained) == []


THINK, UNTHINK, NL = 40, 41, 42
EMPTY_THINK = (THINK, NL, UNTHINK, NL)


def test_prefill_trained_at_the_start_of_an_assistant_turn():
    #       0   1   2      3   4       5   6   7       8
    ids = [10, 11, THINK, NL, UNTHINK, NL, 12, IM_END, 13]
    roles = [P, P, C, C, C, C, C, C, U]
    trained = [0, 0, 1, 1, 1, 1, 1, 1, 0]
    s = view(ids, roles, trained, prefills=(EMPTY_THINK,))
    assert names(s) == [("prefill_trained", [2, 3, 4, 5])]
    finding = prefill_trained(s)
    assert (
        finding.severity == "warning" and "'t40t42t41t42'" in finding.message and "enable_thinking" in finding.message
    )
    # Masked, the fix: silent, and not completion_untrained either.
    assert names(view(ids, roles, [0, 0, 0, 0, 0, 0, 1, 1, 0], prefills=(EMPTY_THINK,))) == []
    # Without the template's prefill known, those are ordinary completion tokens.
    assert names(view(ids, roles, [0, 0, 0, 0, 0, 0, 1, 1, 0])) == [("completion_untrained", [2, 3, 4, 5])]


def test_prefill_counted_as_prompt_is_prefill_trained_not_prompt_leak():
    ids = [10, 11, THINK, NL, UNTHINK, NL, 12, IM_END]
    roles = [P, P, P, P, P, P, C, C]
    s = view(ids, roles, [0, 0, 1, 1, 1, 1, 1, 1], prefills=(EMPTY_THINK,))
    assert names(s) == [("prefill_trained", [2, 3, 4, 5])]
    # A run of those tokens elsewhere (not at an assistant turn's start) is no prefill.
    inside = view(
        [10, 12, THINK, NL, UNTHINK, NL, IM_END], [P, C, C, C, C, C, C], [0, 1, 1, 1, 1, 1, 1], prefills=(EMPTY_THINK,)
    )
    assert names(inside) == []
    unknown = view(ids, [U] * 8, [0, 0, 1, 1, 1, 1, 1, 1], prefills=(EMPTY_THINK,))
    assert prefill_trained(unknown) is None
