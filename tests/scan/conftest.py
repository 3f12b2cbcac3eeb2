"""What the scan tests compare against: a row as check's SampleView sees it, built independently of gradscope.scan."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from gradscope.checks.sample import SampleView
from gradscope.data.batch import COMPLETION, PAD, PROMPT, UNKNOWN

EOS, PAD_ID = 2, 0


def _reference_view(
    row: dict[str, np.ndarray],
    index: int,
    pad_id: int = PAD_ID,
    *,
    prefills: tuple = (),
    bos: int | None = None,
    adds_bos: bool = False,
    documents: bool = False,
) -> SampleView:
    """The row as check sees it. With ``documents``, packed documents start where position_ids do not continue,
    between real tokens, and the boundaries are known (the packing probe's view)."""
    ids = torch.tensor(row["input_ids"])
    labels = torch.tensor(row["labels"])
    trained = (labels != -100) & (torch.arange(len(ids)) > 0)
    role = torch.full(ids.shape, UNKNOWN)
    if "completion_mask" in row:
        role = torch.where(torch.tensor(row["completion_mask"]) == 1, COMPLETION, PROMPT)
    real = torch.tensor(row["attention_mask"]) == 1
    role[~real] = PAD
    starts = set()
    if documents and "position_ids" in row:
        p = row["position_ids"]
        starts = {t for t in range(1, len(p)) if p[t] != p[t - 1] + 1 and real[t] and real[t - 1]}
    cut = int(row["completion_cut"][0]) if "completion_cut" in row else 0
    return SampleView(
        index,
        ids,
        role,
        trained,
        torch.where(trained, labels, -1),
        [None] * len(ids),
        frozenset({EOS}),
        pad_id,
        document_starts=frozenset(starts),
        completion_cut=cut,
        bos_token_id=bos,
        bos_added=adds_bos,
        boundaries_known=documents,
        prefills=prefills,
    )


@pytest.fixture
def reference_view() -> Callable[..., SampleView]:
    return _reference_view
