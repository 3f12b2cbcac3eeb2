"""Loading batch files: scalars stored as 0-d tensors come back as the Python values collators give."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from gradscope.load import load_batches


def test_scalars_become_python_values_and_samples_keep_them(tmp_path):
    path = tmp_path / "packed.safetensors"
    save_file(
        {
            "input_ids": torch.tensor([[5, 6, 7], [8, 9, 10]]),
            "use_cache": torch.tensor(False),
            "max_length_q": torch.tensor(3),
            "cu_seq_lens_q": torch.tensor([0, 3], dtype=torch.int32),
        },
        str(path),
    )
    [batch] = load_batches(path, pad_token_id=0, samples=1)
    assert batch["use_cache"] is False and batch["max_length_q"] == 3 and isinstance(batch["max_length_q"], int)
    assert batch["input_ids"].tolist() == [[5, 6, 7]] and batch["cu_seq_lens_q"].tolist() == [0, 3]


def test_first_rows_slices_only_per_row_tensors():
    import torch

    from gradscope.load import first_rows

    batch = {"input_ids": torch.ones(3, 4, dtype=torch.long), "cu_seq_lens_q": torch.tensor([0, 2, 4, 5, 9])}
    out = first_rows(batch, 2)
    assert out["input_ids"].shape == (2, 4)
    assert out["cu_seq_lens_q"].tolist() == [0, 2, 4, 5, 9]
