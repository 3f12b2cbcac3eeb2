"""Labels are declared intent: a loss that trains what the labels mask fails `check --loss`, with or without roles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradscope.cli import app

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
runner = CliRunner()


@pytest.mark.parametrize(
    ("model", "batch", "roles"),
    [
        ("tiny-llama-chat", "llama_clean", "completion_mask"),
        ("tiny-llama-chat", "llama_unknown_roles", "chat_template"),
        ("tiny-gpt2", "gpt2_clean_noroles", "unknown"),
    ],
)
def test_check_with_a_loss_that_drops_the_mask_fails(model, batch, roles):
    result = runner.invoke(
        app,
        [
            "check",
            str(FIXTURES / "models" / model),
            str(FIXTURES / "batches" / f"{batch}.safetensors"),
            "--loss",
            f"{FIXTURES / 'losses.py'}:drops_the_mask",
            "--probes",
            "none",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert {s["roles_source"] for s in data["samples"]} == {roles}
    checks = {f["check"] for f in data["findings"]}
    assert "masked_label_trained" in checks and checks <= {"masked_label_trained", "roles_unknown"}
    assert {f["sample"] for f in data["findings"] if f["check"] == "masked_label_trained"} == {0, 1, 2}


def test_the_same_batch_with_a_loss_that_honours_the_mask_has_no_such_finding():
    result = runner.invoke(
        app,
        [
            "check",
            str(FIXTURES / "models/tiny-llama-chat"),
            str(FIXTURES / "batches/llama_clean.safetensors"),
            "--loss",
            f"{FIXTURES / 'losses.py'}:token_mean",
            "--probes",
            "none",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["findings"] == []


def test_not_verified_says_what_the_labels_alone_establish():
    """Roles unknown (GPT-2, no chat template): next to "not verified", what the labels alone show."""

    def unknown(batch: str) -> str:
        result = runner.invoke(
            app,
            [
                "check",
                str(FIXTURES / "models/tiny-gpt2"),
                str(FIXTURES / "batches" / batch),
                "--probes",
                "none",
                "--format",
                "json",
            ],
        )
        (finding,) = [f for f in json.loads(result.stdout)["findings"] if f["check"] == "roles_unknown"]
        assert "not verified" in finding["message"]
        return finding["message"]

    assert "the labels train every real token of samples 0–2: they copy input_ids" in unknown(
        "gpt2_prompt_leak_noroles.safetensors"
    )
    assert "the labels of samples 0–2 mask some real tokens (-100) and the gradient trains none of them" in unknown(
        "gpt2_clean_noroles.safetensors"
    )
