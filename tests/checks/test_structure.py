"""The structural checks as pure functions, on hand-built measurements whose verdict is known."""

from __future__ import annotations

import torch

from gradscope.checks.structure import (
    CallFacts,
    accumulation_mismatch,
    causal_leak,
    cross_document_leak,
    uneven_token_weights,
)
from gradscope.engine.accumulate import Accumulation
from gradscope.engine.windows import Window

T = 10


def facts(**changes) -> CallFacts:
    base = dict(
        attention="sdpa",
        mask_dims=0,
        mask_is_float=False,
        use_cache=False,
        use_cache_from="config",
        is_causal=None,
        restarts=torch.zeros(1, T, dtype=torch.bool),
        declared_by=("position_ids",),
    )
    return CallFacts(**{**base, **changes})


def seen(*positions_per_slice) -> torch.Tensor:
    out = torch.zeros(len(positions_per_slice), T, dtype=torch.bool)
    for k, positions in enumerate(positions_per_slice):
        out[k, list(positions)] = True
    return out


CUT = [Window(0, 0, 0, 4, boundary=False, future=True), Window(1, 0, 5, 8, boundary=True, future=True)]


def test_causal_prefixes_are_silent():
    assert causal_leak(0, CUT, seen(range(0, 4), range(5, 8)), facts()) is None
    assert cross_document_leak(0, CUT, seen(range(0, 4), range(5, 8)), facts(), 0) is None


def test_future_positions_are_a_causal_leak_with_the_mask_named():
    found = causal_leak(3, CUT, seen(range(0, 6), range(5, 8)), facts(mask_dims=4))
    assert (found.check, found.severity, found.sample, found.positions) == ("causal_leak", "error", 3, [4, 5])
    assert "position 4" in found.message and "lacks the causal part" in found.message


def test_eager_attention_with_a_boolean_4d_mask_is_named():
    found = causal_leak(0, CUT, seen(range(0, 10), []), facts(mask_dims=4, attention="eager"))
    assert "adds a 4D attention_mask to the attention scores" in found.message


def test_earlier_documents_seen_are_a_cross_document_leak_with_every_cause():
    restarts = torch.zeros(1, T, dtype=torch.bool)
    measured = seen(range(0, 4), range(2, 8))  # the document at 5 sees 2-4
    found = cross_document_leak(
        1, CUT, measured, facts(mask_dims=2, use_cache=True, restarts=restarts, declared_by=("cu_seq_lens_q",)), 0
    )
    assert (found.check, found.sample, found.positions) == ("cross_document_leak", 1, [2, 3, 4])
    assert "attention_mask is passed" in found.message
    assert "config has use_cache=True" in found.message
    assert "do not restart at 5" in found.message and "cu_seq_lens_q" in found.message
    assert "use_cache=False" in found.message  # the fix


def test_a_window_that_starts_no_document_checks_no_past():
    window = [Window(0, 0, 0, 4, boundary=False, future=False)]
    assert cross_document_leak(0, window, seen(range(0, 4)), facts(), 0) is None
    assert causal_leak(0, window, seen(range(0, 10)), facts()) is None  # its cut is not checked


def test_uneven_weights_name_the_spread():
    trained = torch.tensor([[0, 1, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.bool)
    # per-sequence mean over 2 rows: row 0 tokens weigh 1/(2*4), row 1 tokens 1/(2*2)
    weight = torch.where(trained, torch.tensor([[1 / 8], [1 / 4]]), 0.0)
    found = uneven_token_weights(weight, trained, torch.zeros(2, 5, dtype=torch.long), samples=[10, 11])
    assert (found.check, found.severity, found.sample) == ("uneven_token_weights", "warning", None)
    assert "×2.00" in found.message and "sample 10, 4 trained tokens" in found.message
    assert "sample 11, 2 trained tokens" in found.message


def test_even_weights_and_documents_of_a_packed_row():
    trained = torch.tensor([[0, 1, 1, 0, 1, 1]], dtype=torch.bool)
    even = torch.where(trained, 0.25, 0.0)
    documents = torch.tensor([[0, 0, 0, 1, 1, 1]])
    assert uneven_token_weights(even, trained, documents, [0]) is None
    assert uneven_token_weights(even * (1 + 0.005), trained, documents, [0]) is None  # inside the tolerance
    per_document = torch.tensor([[0, 0.5, 0.5, 0, 0.25, 0.25]])
    found = uneven_token_weights(per_document, trained, documents, [0])
    assert found is not None and "document 1" in found.message


def _acc(cosine: float, relative: float, scale: float = 1.0) -> Accumulation:
    return Accumulation(3, [[0], [1], [2]], cosine, relative, scale, 0.0)


def test_accumulation_within_tolerance_is_silent():
    assert accumulation_mismatch(_acc(1.0, 1e-7), [4, 4, 4], 0) is None


def test_accumulation_mismatch_names_the_cause():
    uneven = accumulation_mismatch(_acc(0.9, 0.4), [10, 3, 7], 2)
    assert (uneven.check, uneven.severity, uneven.sample) == ("accumulation_mismatch", "error", None)
    assert "batch 2" in uneven.message and "10, 3, 7" in uneven.message and "num_items_in_batch" in uneven.message
    empty = accumulation_mismatch(_acc(float("nan"), float("nan")), [4, 0, 4], 0)
    assert empty is not None and "0/0 = NaN" in empty.message
    scaled = accumulation_mismatch(_acc(1.0, 2 / 3, 1 / 3), [4, 4, 4], 0)
    assert "scaled ×0.333" in scaled.message


def test_dependence_inside_a_declared_bidirectional_span_is_not_a_causal_leak():
    """Gemma 3 attends bidirectionally inside each image (a run of token_type_ids == 1): the outputs before a cut
    inside such a run may depend on the run's later tokens, and on nothing after it."""
    from gradscope.checks.structure import bidirectional_spans

    types = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0, 1, 1]])
    spans = bidirectional_spans(type("C", (), {"model_type": "gemma3"})(), {"token_type_ids": types})
    assert spans.tolist() == [[-1, -1, 0, 0, 0, 0, -1, -1, 1, 1]]
    assert bidirectional_spans(type("C", (), {"model_type": "llama"})(), {"token_type_ids": types}) is None
    window = [Window(0, 0, 0, 4, boundary=False, future=True)]  # outputs 0-3, cut inside the first image
    gemma = facts(bidirectional=spans)
    assert causal_leak(0, window, seen(range(0, 6)), gemma) is None  # 4, 5: the same image
    found = causal_leak(0, window, seen([*range(0, 6), 7]), gemma)
    assert found is not None and found.positions == [7]  # 7 is after the image: a real leak
    assert causal_leak(0, window, seen(range(0, 6)), facts()).positions == [4, 5]  # undeclared: a leak
    # A cut right after an image's last output... inside a later image: only that image's tokens are explained.
    late = [Window(0, 0, 2, 9, boundary=False, future=True)]
    assert causal_leak(0, late, seen([*range(2, 9), 9]), gemma) is None
    assert causal_leak(0, late, seen([*range(2, 10)]), facts()).positions == [9]
