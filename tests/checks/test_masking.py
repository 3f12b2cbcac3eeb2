"""The checks as pure functions, on hand-built samples whose verdict is known."""

from __future__ import annotations

import torch

from gradscope.checks.masking import analyze, check_sample, nonfinite
from gradscope.checks.sample import SampleView, closing_positions
from gradscope.constants import UNKNOWN
from gradscope.data.batch import COMPLETION, PAD, PROMPT
from gradscope.engine.run import Capture
from gradscope.report.text import format_positions

P, C, X, U = PROMPT, COMPLETION, PAD, UNKNOWN
EOS, PAD_ID = 2, 0


def view(ids, roles, trained, targets=None, pad_token_id=PAD_ID, index=0, cut=0):
    ids = torch.tensor(ids)
    trained = torch.tensor(trained, dtype=torch.bool)
    target = torch.tensor(targets) if targets is not None else torch.where(trained, ids, -1)
    return SampleView(
        index=index,
        input_ids=ids,
        roles=torch.tensor(roles),
        trained=trained,
        target_id=target,
        texts=[f"t{i}" for i in ids.tolist()],
        end_token_ids=frozenset({EOS}),
        pad_token_id=pad_token_id,
        completion_cut=cut,
    )


def checks(s):
    return [(f.check, f.positions) for f in check_sample(s)]


#        pos:  0   1   2   3   4   5   6    7
IDS = [10, 11, 12, 13, 14, EOS, 0, 0]
ROLES = [P, P, P, C, C, C, X, X]


def test_clean_sample_is_silent():
    assert checks(view(IDS, ROLES, [0, 0, 0, 1, 1, 1, 0, 0])) == []


def test_prompt_leak_names_positions_and_cause():
    [f] = check_sample(view(IDS, ROLES, [0, 1, 1, 1, 1, 1, 0, 0]))
    assert (f.check, f.positions) == ("prompt_leak", [1, 2])
    assert "labels copy input_ids" in f.message


def test_prompt_leak_at_the_boundary_says_off_by_one():
    [f] = check_sample(view(IDS, ROLES, [0, 0, 1, 1, 1, 1, 0, 0]))
    assert (f.check, f.positions) == ("prompt_leak", [2])
    assert "off by a token" in f.message


def test_pad_leak():
    assert checks(view(IDS, ROLES, [0, 0, 0, 1, 1, 1, 1, 1])) == [("pad_leak", [6, 7])]


def test_completion_untrained_excludes_the_closing_token():
    assert checks(view(IDS, ROLES, [0, 0, 0, 0, 1, 1, 0, 0])) == [("completion_untrained", [3])]


def test_eos_untrained_inside_the_span():
    [f] = check_sample(view(IDS, ROLES, [0, 0, 0, 1, 1, 0, 0, 0]))
    assert (f.check, f.positions) == ("eos_untrained", [5])
    assert "falls outside the completion mask" in f.message


def test_eos_given_to_the_next_turn_is_still_the_closing_token():
    roles = [P, P, P, C, C, P, X, X]  # the template hands EOS to the following turn
    assert checks(view(IDS, roles, [0, 0, 0, 1, 1, 0, 0, 0])) == [("eos_untrained", [5])]
    assert checks(view(IDS, roles, [0, 0, 0, 1, 1, 1, 0, 0])) == []  # trained anyway: no prompt_leak for it


def test_eos_untrained_without_roles_blames_pad_equal_eos():
    roles = [U, U, U, U, U, U, X, X]
    ids = [10, 11, 12, 13, 14, EOS, EOS, EOS]
    [f] = check_sample(view(ids, roles, [0, 1, 1, 1, 1, 0, 0, 0], pad_token_id=EOS))
    assert (f.check, f.positions) == ("eos_untrained", [5])
    assert "pad_token == eos_token" in f.message


def test_without_roles_an_end_token_after_untrained_tokens_is_not_closing():
    roles = [U] * 8
    ids = [10, EOS, 12, 13, 14, EOS, 16, 17]  # a user turn's end at 1, the answer 2-4 closed at 5
    assert checks(view(ids, roles, [0, 0, 0, 1, 1, 1, 0, 0])) == []
    assert checks(view(ids, roles, [0, 0, 0, 1, 1, 0, 0, 0])) == [("eos_untrained", [5])]


def test_no_roles_no_role_checks():
    roles = [U, U, U, U, U, U, X, X]
    assert checks(view(IDS, roles, [0, 1, 1, 1, 1, 1, 0, 0])) == []


def test_no_loss_is_reported_alone():
    assert checks(view(IDS, ROLES, [0] * 8)) == [("no_loss", [])]


def test_completion_truncated_is_a_warning_counting_kept_and_cut_tokens():
    truncated = [P, P, P, C, C, C, C, C]  # cut after 5 completion tokens; 4 more were cut
    [f] = check_sample(view([10, 11, 12, 13, 14, 15, 16, 17], truncated, [0, 0, 0, 1, 1, 1, 1, 1], cut=4))
    assert (f.check, f.severity, f.positions) == ("completion_truncated", "warning", [])
    assert "cut 4 of the 9 completion tokens of sample 0" in f.message
    assert checks(view(IDS, ROLES, [0, 0, 0, 1, 1, 1, 0, 0], cut=0)) == []


def test_no_loss_names_truncation_when_it_cut_the_whole_completion():
    all_cut = [P] * 8
    [f] = check_sample(view([10, 11, 12, 13, 14, 15, 16, 17], all_cut, [0] * 8, cut=6))
    assert f.check == "no_loss"
    assert "Truncation did it: the maximum length cut all 6 completion tokens" in f.message
    [generic] = check_sample(view(IDS, ROLES, [0] * 8, cut=2))  # completion left but untrained: not truncation's doing
    assert "Truncation did it" not in generic.message and "Usual causes" in generic.message


def test_double_shift_is_one_label_misaligned():
    # labels pre-shifted: position t is trained toward token t+1; the leak and the untrained EOS are echoes
    trained = [0, 0, 1, 1, 1, 0, 0, 0]
    targets = [-1, -1, 13, 14, EOS, -1, -1, -1]
    [f] = check_sample(view(IDS, ROLES, trained, targets))
    assert (f.check, f.positions) == ("label_misaligned", [2, 3, 4])
    assert "t+1" in f.message


def test_trained_padding_with_another_target_is_pad_leak():
    targets = [-1, -1, -1, 13, 14, EOS, EOS, EOS]  # pads labelled with EOS, not with the pad id
    assert checks(view(IDS, ROLES, [0, 0, 0, 1, 1, 1, 1, 1], targets)) == [("pad_leak", [6, 7])]


def test_closing_positions():
    assert closing_positions(view(IDS, ROLES, [0] * 8)) == [5]
    truncated = [P, P, P, C, C, C, C, C]  # a completion cut before its end token has none
    assert closing_positions(view([10, 11, 12, 13, 14, 15, 16, 17], truncated, [0] * 8)) == []


def test_format_positions():
    assert format_positions([0, 1, 2, 3, 7, 9, 10]) == "0–3, 7, 9–10"
    assert format_positions([4]) == "4"


def build_capture(loss, logits_finite=True, grads_finite=True, layers=()):
    z = torch.zeros(1, 8)
    return Capture(loss, z, z, z.long(), z, z, torch.zeros(1, 2, 8), logits_finite, grads_finite, True, list(layers))


def test_nonfinite_is_batch_level_and_suppresses_role_checks():
    s = view(IDS, ROLES, [0, 1, 1, 1, 1, 1, 0, 0])
    [f] = analyze(build_capture(float("nan"), grads_finite=False, layers=[1]), [s], torch.tensor([IDS]))
    assert (f.check, f.sample) == ("nonfinite", None)
    assert "layer 1" in f.message
    assert nonfinite(build_capture(1.0)) is None


def test_nan_loss_from_zero_trained_tokens_is_no_loss():
    s = view(IDS, ROLES, [0] * 8)
    [f] = analyze(build_capture(float("nan"), grads_finite=False), [s], torch.full((1, 8), -100))
    assert f.check == "no_loss"
    assert "NaN" in f.message


def _packed(trained, starts, roles=None):
    """Two packed documents [0, 4) and [4, 8); document starts as the packing probe gives them."""
    ids = [10, 11, 12, EOS, 10, 11, 12, EOS]
    s = view(ids, roles or [U] * 8, trained)
    return SampleView(**{**s.__dict__, "document_starts": frozenset(starts)})


def test_a_trained_document_start_is_a_boundary_leak():
    assert checks(_packed([0, 1, 1, 1, 1, 1, 1, 1], {4})) == [("boundary_leak", [4])]
    assert checks(_packed([0, 1, 1, 1, 0, 1, 1, 1], {4})) == []


def test_a_boundary_leak_is_not_also_a_prompt_leak():
    roles = [P, C, C, C, P, C, C, C]  # each document: a prompt token, then its completion
    assert checks(_packed([0, 1, 1, 1, 1, 1, 1, 1], {4}, roles)) == [("boundary_leak", [4])]
    # Without the packing probe the same token is an ordinary prompt leak.
    assert checks(_packed([0, 1, 1, 1, 1, 1, 1, 1], set(), roles)) == [("prompt_leak", [4])]
