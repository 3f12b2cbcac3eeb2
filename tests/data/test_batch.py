"""Reading packed documents off a batch, selecting rows, and validating what padding-free collators emit."""

from __future__ import annotations

import pytest
import torch

from gradscope.data.batch import document_starts, select_rows, validate
from gradscope.errors import DataError


def _ids(rows: int, t: int) -> torch.Tensor:
    return torch.ones(rows, t, dtype=torch.long)


def test_documents_from_restarted_position_ids():
    batch = {"input_ids": _ids(2, 6), "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])}
    assert document_starts(batch).nonzero().tolist() == [[0, 3], [0, 5]]


def test_documents_from_seq_idx_and_from_flattened_cu_seq_lens():
    seq_idx = {"input_ids": _ids(1, 6), "seq_idx": torch.tensor([[0, 0, 1, 1, 1, 2]], dtype=torch.int32)}
    assert document_starts(seq_idx).nonzero()[:, 1].tolist() == [2, 5]
    # cu_seq_lens index the flattened (B * T) batch: 7 is row 1, position 3; 4 is the start of row 1.
    cu = {"input_ids": _ids(2, 4), "cu_seq_lens_q": torch.tensor([0, 2, 4, 7, 8], dtype=torch.int32)}
    assert document_starts(cu).nonzero().tolist() == [[0, 2], [1, 3]]


def test_every_declaration_counts():
    batch = {
        "input_ids": _ids(1, 8),
        "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]]),
        "cu_seq_lens_k": torch.tensor([0, 3, 6, 8]),
    }
    assert document_starts(batch)[0].nonzero().flatten().tolist() == [3, 6]


def test_a_plain_batch_has_one_document_per_row():
    assert not document_starts({"input_ids": _ids(3, 5)}).any()


def test_select_rows_keeps_what_is_not_per_row():
    batch = {
        "input_ids": torch.arange(6).view(3, 2),
        "attention_mask": torch.ones(3, 1, 2, 2),
        "use_cache": False,
        "cu_seq_lens_q": torch.tensor([0, 3]),
    }
    part = select_rows(batch, [2])
    assert part["input_ids"].tolist() == [[4, 5]] and part["attention_mask"].shape == (1, 1, 2, 2)
    assert part["use_cache"] is False and part["cu_seq_lens_q"].tolist() == [0, 3]
    assert select_rows(batch, slice(0, 2))["input_ids"].shape == (2, 2)


@pytest.mark.parametrize(
    "cu",
    [torch.tensor([1, 3]), torch.tensor([0, 5, 3]), torch.tensor([0, 9]), torch.tensor([0.0, 4.0]), torch.tensor(4)],
)
def test_bad_cu_seq_lens_are_bad_input(cu):
    with pytest.raises(DataError, match="cu_seq_lens_q"):
        validate({"input_ids": _ids(2, 4), "cu_seq_lens_q": cu}, vocab_size=10)


def test_seq_idx_must_have_one_entry_per_token():
    with pytest.raises(DataError, match="'seq_idx' has shape"):
        validate({"input_ids": _ids(1, 4), "seq_idx": torch.zeros(1, 3, dtype=torch.int32)}, vocab_size=10)
    with pytest.raises(DataError, match="'labels' must be a tensor"):
        validate({"input_ids": _ids(1, 4), "labels": 3}, vocab_size=10)


def test_position_id_documents_follow_transformers_rule():
    from transformers.masking_utils import find_packed_sequence_indices

    position_ids = torch.tensor([[0, 1, 2, 0, 1, 5, 6, 6, 0, 1]])  # restarts, a jump, a repeat
    starts = document_starts({"input_ids": _ids(1, 10), "position_ids": position_ids})
    documents = find_packed_sequence_indices(position_ids)  # transformers' own reading, used by sdpa and eager
    assert torch.equal(starts.cumsum(1), documents)
