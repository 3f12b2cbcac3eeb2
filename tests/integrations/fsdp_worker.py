"""Run by tests/integrations/test_watch_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU): the tiny
Llama sharded with FSDP2's ``fully_shard`` (each decoder layer, the LM head as its own unit, then the root), one
training step driven by hand with GradscopeCallback's events, since accelerate 1.15 does not run FSDP on the CPU
(its FSDP type is only set for accelerator devices; ``fsdp=`` on a CPU Trainer runs plain DDP). Writes what each
rank saw to OUT/rank<r>.json."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
torch.set_num_threads(1)

import gradscope
from fixtures.trainers import CHATS, MODEL
from gradscope.integrations import GradscopeCallback
from gradscope.model.load import load_model, load_tokenizer


def chat_batch(tokenizer, rank: int, leak: bool) -> dict[str, torch.Tensor]:
    """Rank r trains chat r of the fixture rows: labels on the assistant turns, or on every token (``leak``)."""
    out = tokenizer.apply_chat_template(CHATS[rank]["messages"], return_dict=True, return_assistant_tokens_mask=True)
    ids = torch.tensor([out["input_ids"]])
    labels = ids.clone() if leak else torch.where(torch.tensor([out["assistant_masks"]]).bool(), ids, -100)
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def sharded_model(fused: bool):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    model = load_model(MODEL)
    if fused:
        add_fused_lm_head(model)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model.lm_head, mesh=mesh)  # a sharded head: the fused path's re-projection must gather it
    fully_shard(model, mesh=mesh)
    return model


def step(fused: bool, leak_on: int | None, token_mean: bool, per_world: bool = True) -> dict:
    """One watched step: forward, backward, the callback's verdict, then the optimizer step unless it raised."""
    rank, tokenizer = dist.get_rank(), load_tokenizer(MODEL)
    model = sharded_model(fused)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    callback = GradscopeCallback(write_report=False)
    callback.on_train_begin(None, None, None, model=model, processing_class=tokenizer)
    batch = chat_batch(tokenizer, rank, leak=rank == leak_on)
    trained = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))
    dist.all_reduce(trained)  # the step's trained tokens over every rank
    extra = {"num_items_in_batch": trained} if token_mean else {}  # else each rank's own token mean
    model.train()
    out = model(**batch, **extra, **({"fused_lm_head": True} if fused else {}))
    # FSDP averages the ranks' gradients: a token mean over both ranks' tokens multiplies by the world size (as
    # transformers does with average_tokens_across_devices); without it the update is half a token mean.
    (out.loss * (dist.get_world_size() if token_mean and per_world else 1)).backward()
    before = [p.detach().to_local().clone() for p in model.parameters()]
    error = None
    try:
        callback.on_pre_optimizer_step(None, None, None)
        optimizer.step()
    except gradscope.MaskingError as err:
        error = str(err)
    report = callback.report
    return {
        "error": error,
        "changed": any(
            not torch.equal(b, p.detach().to_local()) for b, p in zip(before, model.parameters(), strict=True)
        ),
        "findings": [[f.check, f.rank, f.sample] for f in report.findings],
        "read_at": report.data["watched"]["read_at"],
        "roles_from": report.data["watched"]["roles_from"],
        "trained_tokens": int(trained),
        "weights": [[t.weight for t in s.tokens if t.trained] for s in report.samples],
        "roles": [[t.role for t in s.tokens if t.trained] for s in report.samples],
    }


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    results = {
        f"{'fused' if fused else 'logits'} {name}": step(fused, leak_on, token_mean, per_world)
        for fused in (True, False)
        for name, leak_on, token_mean, per_world in (
            ("clean", None, True, True),
            ("leak_on_rank_1", 1, True, True),
            ("rank_means", None, False, True),
            ("not_per_world", None, True, False),
        )
    }
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()  # before exit: gloo threads torn down at interpreter exit abort the process


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
