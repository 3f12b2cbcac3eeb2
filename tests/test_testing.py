"""gradscope.testing.assert_masking: a batch whose roles are unknown is not a pass unless the test says so."""

from __future__ import annotations

import pytest
import torch

from gradscope.testing import assert_masking


def _batch(roles: bool) -> dict[str, torch.Tensor]:
    """One row: prompt 1-3, completion 4-6 closed by EOS (id 5), labels on the completion only."""
    ids = torch.tensor([[7, 8, 9, 10, 11, 12, 5, 13]])
    completion = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 0]])
    batch = {"input_ids": ids, "labels": torch.where(completion.bool(), ids, -100)}
    return {**batch, "completion_mask": completion} if roles else batch


def test_unknown_roles_fail_unless_allowed(random_model):
    with pytest.raises(AssertionError, match="roles_unknown") as err:
        assert_masking(random_model, _batch(roles=False), end_token_ids=[5])
    assert "not verified" in str(err.value)
    report = assert_masking(random_model, _batch(roles=False), end_token_ids=[5], allow_unknown_roles=True)
    assert [f.check for f in report.findings] == ["roles_unknown"]
    assert report.summary()["verified"] is False


def test_known_roles_pass(random_model):
    report = assert_masking(random_model, _batch(roles=True), end_token_ids=[5])
    assert report.findings == [] and report.summary()["verified"] is True


def test_a_response_template_without_a_tokenizer_is_bad_input(random_model):
    from gradscope.errors import DataError

    with pytest.raises(DataError, match="response_template needs a tokenizer"):
        assert_masking(random_model, _batch(roles=False), response_template="x")
