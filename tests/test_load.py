

def test_first_rows_slices_only_per_row_tensors():
    import torch

    from gradscope.load import first_rows

    batch = {"input_ids": torch.ones(3, 4, dtype=torch.long), "cu_seq_lens_q": torch.tensor([0, 2, 4, 5, 9])}
    out = first_rows(batch, 2)
    assert out["input_ids"].shape == (2, 4)
    assert out["cu_seq_lens_q"].tolist() == [0, 2, 4, 5, 9]
