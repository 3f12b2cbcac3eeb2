"""StepWatcher in a loop shaped like torchtune's ``full_finetune_single_device`` recipe (torchtune 0.6): its own
model builder (``llama3``, small and randomly initialised, the fixture's vocabulary), its tokenizer
(``HuggingFaceBaseTokenizer`` on the fixture's tokenizer.json), ``CEWithChunkedOutputLoss`` over the model's chunked
output, gradient accumulation with the recipe's ``loss * current_num_tokens`` and ``scale_grads(model, 1 /
num_tokens)`` (restated here, see below). The three lines a copied recipe adds are marked ``# gradscope``."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

import gradscope
from fixtures.trainers import MODEL, PROMPT_COMPLETION
from gradscope.integrations import StepWatcher

pytest.importorskip("torchtune")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")

IGNORE = -100


@functools.cache
def tokenizer():
    """torchtune's tokenizer over the fixture's tokenizer.json; the fixture has no BOS token, which torchtune's
    tokenizer requires in its config: one is named there (``<|im_start|>``) and never added."""
    from torchtune.modules.transforms.tokenizers import HuggingFaceBaseTokenizer

    config = Path(tempfile.mkdtemp()) / "tokenizer_config.json"
    config.write_text(json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}))
    return HuggingFaceBaseTokenizer(str(MODEL / "tokenizer.json"), tokenizer_config_json_path=str(config))


def samples(mask_prompt: bool = True, rows: list[dict[str, str]] = PROMPT_COMPLETION) -> list[dict[str, Any]]:
    """torchtune-style samples: prompt and completion tokenized separately (EOS last), labels = tokens
    with the prompt at -100 (or not), and the prompt / completion split kept as a role tensor."""
    tok = tokenizer()
    out = []
    for row in rows:
        prompt = tok.encode(row["prompt"], add_bos=False, add_eos=False)
        completion = tok.encode(row["completion"], add_bos=False, add_eos=True)
        tokens = prompt + completion
        labels = [IGNORE] * len(prompt) + completion if mask_prompt else list(tokens)
        out.append({"tokens": tokens, "labels": labels, "completion": [0] * len(prompt) + [1] * len(completion)})
    return out


def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """torchtune's padded_collate_sft: right padding with the pad id, labels padded with -100."""
    width = max(len(r["tokens"]) for r in rows)
    pad = {"tokens": 3, "labels": IGNORE, "completion": 0}
    return {k: torch.tensor([r[k] + [v] * (width - len(r[k])) for r in rows]) for k, v in pad.items()}


def model():
    from torchtune.models.llama3 import llama3

    torch.manual_seed(0)
    return llama3(
        vocab_size=480, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=64, max_seq_len=128, intermediate_dim=176
    )


def recipe_step(
    rows: list[dict[str, Any]],
    accumulation: int = 2,
    batch_size: int = 1,
    per_micro_batch_mean: bool = False,
    loss_ignores_labels: bool = False,
    scale_grads_after: bool = True,
):
    """One optimizer step of the recipe's train loop (``full_finetune_single_device.train``, torchtune 0.6)."""
    from torchtune.modules.loss import CEWithChunkedOutputLoss

    net, loss_fn = model(), CEWithChunkedOutputLoss()
    net.set_num_output_chunks(loss_fn.num_output_chunks)
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in net.parameters()]
    loader = [collate(rows[i : i + batch_size]) for i in range(0, accumulation * batch_size, batch_size)]
    watcher = StepWatcher(net, fail_on="error")  # gradscope
    ignore_labels_cache = torch.full((batch_size, 1), IGNORE)
    num_tokens, error = 0, None
    try:
        for idx, batch in enumerate(loader):
            labels, completion = batch.pop("labels"), batch.pop("completion")
            if loss_ignores_labels:
                labels = batch["tokens"].clone()
            current_num_tokens = (labels != IGNORE).sum()
            num_tokens += current_num_tokens
            with watcher.micro_batch({"labels": labels, "completion_mask": completion}):  # gradscope
                logits = net(**batch)
                shifted = torch.hstack((labels[..., 1:], ignore_labels_cache[: labels.shape[0]]))
                current_loss = loss_fn(logits, shifted) * (1 if per_micro_batch_mean else current_num_tokens)
            current_loss.backward()
            if (idx + 1) % accumulation == 0:
                watcher.check(grad_scale=1 / float(num_tokens) if scale_grads_after else 1.0)  # gradscope
                if scale_grads_after:
                    scale_grads(net, 1 / num_tokens)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    except gradscope.MaskingError as err:
        error = err
    changed = any(not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))
    return watcher, error, changed


def scale_grads(model: torch.nn.Module, scaler: torch.Tensor) -> None:
    """torchtune.training.scale_grads, restated: ``torchtune.training`` cannot be imported next to peft 0.21, since
    its quantization module imports torchao's ``int4_weight_only`` (gone from torchao 0.16 on) and peft refuses a
    torchao older than 0.16."""
    for p in model.parameters():
        if p.grad is not None:
            p.grad *= scaler


def varied() -> list[dict[str, Any]]:
    words = [" blue", " one two three four five six seven"]
    return samples(rows=[{"prompt": f"Question {i}?\nAnswer:", "completion": w} for i, w in enumerate(words)])


def test_torchtune_recipe_step_trains():
    watcher, error, changed = recipe_step(varied())
    assert error is None and changed
    report = watcher.report
    assert report.findings == [] and report.data["watched"] == {
        "ranks": 1,
        "micro_batches": 2,
        "read_at": ["logits"],
        "roles_from": ["inputs"],
    }
    # The read weight of each trained token is 1 (loss * current_num_tokens); scale_grads makes it 1 / N.
    weights = torch.tensor([t.weight for s in report.samples for t in s.tokens if t.trained])
    torch.testing.assert_close(weights, torch.ones_like(weights), rtol=1e-3, atol=0)
    trained = [[t.role for t in s.tokens if t.trained] for s in report.samples]
    assert all(roles and set(roles) == {"completion"} for roles in trained)


def test_torchtune_recipe_with_labels_that_copy_the_prompt_stops():
    watcher, error, changed = recipe_step(samples(mask_prompt=False))
    assert error is not None and not changed and {f.check for f in watcher.report.findings} == {"prompt_leak"}


def test_torchtune_recipe_with_a_loss_that_ignores_the_labels_stops():
    watcher, error, changed = recipe_step(samples(), loss_ignores_labels=True)
    assert error is not None and not changed and "prompt_leak" in {f.check for f in watcher.report.findings}


def test_torchtune_recipe_with_per_micro_batch_means_stops():
    watcher, error, changed = recipe_step(varied(), per_micro_batch_mean=True)
    assert error is not None and not changed
    assert [f.check for f in watcher.report.findings] == ["uneven_step_weights"]


def test_torchtune_recipe_without_scale_grads_gets_step_scale():
    """A recipe that forgets ``scale_grads``: the step is the token sum, ×N of a token mean."""
    watcher, error, changed = recipe_step(varied(), scale_grads_after=False)
    assert error is not None and not changed and [f.check for f in watcher.report.findings] == ["step_scale"]
    trained = sum(1 for s in watcher.report.samples for t in s.tokens if t.trained)  # independent count
    assert f"×{trained} of a token mean" in str(error) and "×N: the loss is a sum" in str(error)
