"""Run by tests/test_watch_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU): watched SFT runs
on two ranks. Writes what each rank saw to OUT/rank<r>.json."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
torch.set_num_threads(1)

from fixtures.trainers import sft, train

ROWS = [
    {"prompt": "Question: What colour is the sky?\nAnswer:", "completion": " blue"},
    {"prompt": "Question: Count to seven.\nAnswer:", "completion": " one two three four five six seven"},
]


def leaky_on_rank_1():
    """TRL's collator, except that on rank 1 the labels copy input_ids (a per-rank pipeline bug)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    inner = DataCollatorForLanguageModeling(pad_token_id=3)

    def collate(rows):
        batch = inner(rows)
        if int(os.environ["RANK"]) == 1:
            batch["labels"] = torch.where(batch["attention_mask"] == 1, batch["input_ids"], -100)
        return batch

    return collate


def scenario(out, **options):
    run = train(sft(ROWS, out, per_device_train_batch_size=1, ddp_backend="gloo", **options))
    report = run.callback.report
    return {
        "error": None if run.error is None else str(run.error),
        "global_step": run.trainer.state.global_step,
        "changed": run.changed,
        "findings": [[f.check, f.rank, f.micro_batch, f.sample, f.row] for f in report.findings],
        "ranks": report.data["watched"]["ranks"],
        "samples": [[s.rank, s.micro_batch, s.row] for s in report.samples],
    }


def main(out: Path) -> None:
    rank = int(os.environ["RANK"])
    results = {
        "leak_on_rank_1": scenario(out / "a", collator=leaky_on_rank_1()),
        "unequal_counts_not_averaged": scenario(out / "b", average_tokens_across_devices=False),
        "unequal_counts_averaged": scenario(out / "c", average_tokens_across_devices=True),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(results))


def shut_down() -> None:
    """Leave the process group before the interpreter exits: gloo's threads torn down at exit abort the process
    ("terminate called without an active exception"), which torchrun reports as a failed rank."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    shut_down()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
