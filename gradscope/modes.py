"""The modes gradscope's options take: each a ``Literal`` type, which mypy checks at every call, and the tuple of its
values, which the runtime checks and error messages list (read from the type, so the two cannot drift)."""

from __future__ import annotations

from typing import Literal, get_args

Depth = Literal["full", "logits"]
"""``full``: backward through the network; ``logits``: masking only, no backward past the logits."""

TrainOn = Literal["all-assistant", "last-assistant"]
"""Which assistant turns of a chat row are completion."""

FailOn = Literal["error", "warning"]
"""What stops a watched training run (None: nothing does)."""

Optimizer = Literal["adamw", "sgd"]
"""The optimizer of ``overfit``."""

Dtype = Literal["float32", "bfloat16", "float16"]
"""The dtype a model loads in."""

Pipeline = Literal["reference", "trl"]
"""Who builds batches from raw rows: gradscope's reference masking or TRL's own preparation and collator."""

TruncationMode = Literal["keep_start", "keep_end"]
"""Which end of a row ``max_length`` keeps."""

DEPTHS: tuple[Depth, ...] = get_args(Depth)
TRAIN_ON: tuple[TrainOn, ...] = get_args(TrainOn)
FAIL_ON: tuple[FailOn, ...] = get_args(FailOn)
OPTIMIZERS: tuple[Optimizer, ...] = get_args(Optimizer)
DTYPE_NAMES: tuple[Dtype, ...] = get_args(Dtype)
PIPELINES: tuple[Pipeline, ...] = get_args(Pipeline)
TRUNCATION_MODES: tuple[TruncationMode, ...] = get_args(TruncationMode)
