"""GradscopeCallback under torchrun: 2 ranks, gloo, CPU, the tiny Llama fixture: TRL's SFTTrainer under DDP, and a
hand-driven step under FSDP2 (``fully_shard``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
WORKER = Path(__file__).with_name("ddp_worker.py")
FSDP_WORKER = Path(__file__).with_name("fsdp_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(worker: Path, out: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(worker.parents[2]), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(worker),
        str(out),
    ]
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return launch(WORKER, tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def fsdp_ranks(tmp_path_factory):
    return launch(FSDP_WORKER, tmp_path_factory.mktemp("fsdp"))


def test_a_leak_on_one_rank_stops_both_with_the_same_error(ranks):
    zero, one = (r["leak_on_rank_1"] for r in ranks)
    assert zero["error"] is not None and zero["error"] == one["error"]  # the same MaskingError, no collective error
    assert "on rank(s) 1" in zero["error"] and "rank 1, micro-batch 0" in zero["error"]
    assert zero["findings"] == one["findings"] and {f[0] for f in zero["findings"]} == {"prompt_leak"}
    assert all(f[1] == 1 for f in zero["findings"])
    assert zero["ranks"] == 2 and sorted(s[0] for s in zero["samples"]) == [0, 1]  # every rank's batch checked
    assert zero["global_step"] == one["global_step"] == 0 and not zero["changed"] and not one["changed"]


def test_unequal_token_counts_without_averaging_across_devices_stop(ranks):
    zero, one = (r["unequal_counts_not_averaged"] for r in ranks)
    assert zero["error"] == one["error"] and "uneven_step_weights" in zero["error"]
    assert "across ranks" in zero["error"] and "average_tokens_across_devices=True" in zero["error"]
    assert not zero["changed"] and not one["changed"]


def test_unequal_token_counts_averaged_across_devices_train(ranks):
    for rank in ranks:
        run = rank["unequal_counts_averaged"]
        assert run["error"] is None and run["findings"] == [] and run["global_step"] == 1 and run["changed"]


# --- FSDP2: every parameter sharded over the two ranks, the LM head its own unit --------------------------------


@pytest.mark.parametrize("path, read_at", [("fused", "lm_head_input"), ("logits", "logits")])
def test_fsdp_token_mean_over_the_step_trains(fsdp_ranks, path, read_at):
    for rank in fsdp_ranks:
        run = rank[f"{path} clean"]
        assert run["error"] is None and run["findings"] == [] and run["changed"]
        assert run["read_at"] == [read_at] and run["roles_from"] == ["chat_template"]
        # Each token weighs 2 / (trained tokens of both ranks) at its own backward, 1 / N once FSDP averages the
        # two ranks' gradients, read off the sharded model's real gradient.
        for weights, roles in zip(run["weights"], run["roles"], strict=True):
            torch.testing.assert_close(
                torch.tensor(weights), torch.full((len(weights),), 2 / run["trained_tokens"]), rtol=1e-3, atol=0
            )
            assert weights and set(roles) == {"completion"}


@pytest.mark.parametrize("path", ["fused", "logits"])
def test_fsdp_leak_on_one_rank_stops_both_before_the_step(fsdp_ranks, path):
    zero, one = (rank[f"{path} leak_on_rank_1"] for rank in fsdp_ranks)
    assert zero["error"] is not None and zero["error"] == one["error"] and "on rank(s) 1" in zero["error"]
    assert zero["findings"] == one["findings"] == [["prompt_leak", 1, 1]]
    assert not zero["changed"] and not one["changed"]


@pytest.mark.parametrize("path", ["fused", "logits"])
def test_fsdp_per_rank_means_stop_with_uneven_step_weights(fsdp_ranks, path):
    zero, one = (rank[f"{path} rank_means"] for rank in fsdp_ranks)
    assert zero["error"] == one["error"] and "across ranks" in zero["error"]
    assert {f[0] for f in zero["findings"]} == {"uneven_step_weights"} and not zero["changed"]
    for weights in zero["weights"]:  # each rank's own token mean: 1 / (that rank's trained tokens)
        torch.testing.assert_close(
            torch.tensor(weights), torch.full((len(weights),), 1 / len(weights)), rtol=1e-3, atol=0
        )


@pytest.mark.parametrize("path", ["fused", "logits"])
def test_fsdp_token_mean_not_scaled_by_the_world_size_stops_with_step_scale(fsdp_ranks, path):
    """Each rank divides by both ranks' tokens but FSDP averages the gradients: every token weighs half a token
    mean over the step, uniformly (no uneven_step_weights); the step_scale finding gives the factor and the fix."""
    zero, one = (rank[f"{path} not_per_world"] for rank in fsdp_ranks)
    assert zero["error"] == one["error"] and not zero["changed"] and not one["changed"]
    assert [f[0] for f in zero["findings"]] == ["step_scale"]
    assert "×0.5 of a token mean" in zero["error"] and "÷2 = the ranks" in zero["error"]
    for weights in zero["weights"]:  # read: 1 / (both ranks' trained tokens); in the update, half that
        torch.testing.assert_close(
            torch.tensor(weights), torch.full((len(weights),), 1 / zero["trained_tokens"]), rtol=1e-3, atol=0
        )
