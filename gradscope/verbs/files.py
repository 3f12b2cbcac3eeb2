"""The verbs on paths: what each command of the CLI does, as one library call.

A command names a model directory and a data file; these functions load both, run the verb and return its Report,
so a Python caller (a test suite, a notebook) does exactly what ``gradscope check`` does:

    >>> report = gradscope.check_files(gradscope.Inputs("models/my-sft", "batch.safetensors"))
    >>> report = gradscope.grads_files(gradscope.Inputs("models/my-sft", "rows.jsonl"), overfit=20)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gradscope.checks.grads import DEFAULT_LR, DEFAULT_MAX_GRAD_NORM
from gradscope.data.load import load_data, load_role_rows
from gradscope.data.pipelines import DataOptions, row_notes
from gradscope.data.tokens import config_end_token_ids, default_end_token_ids, resolve_pad_token_id
from gradscope.errors import DataError
from gradscope.model.load import load_model_and_tokenizer, load_tokenizer
from gradscope.model.usercode import LossFn, load_loss_fn
from gradscope.modes import Dtype, Optimizer
from gradscope.report.check import Report, SampleReport
from gradscope.report.roles import RolesReport
from gradscope.tokenizer import Tokenizer
from gradscope.verbs.check import check_batches, chosen_depth, chosen_probes
from gradscope.verbs.grads import grads
from gradscope.verbs.options import CheckKeywords, CheckOptions, check_options
from gradscope.verbs.overfit import overfit as overfit_batch
from gradscope.verbs.verify import verify

if TYPE_CHECKING:
    from typing_extensions import Unpack


@dataclass
class Inputs:
    """What a command names: the model, the data, and how to load and batch them.

    Args:
        model: A local model directory, or a PEFT adapter directory (its base from ``base`` or its config).
        data: A batch file (.safetensors), tokenized or raw rows (.jsonl, .json, .parquet, .arrow, a saved
            ``datasets`` directory).
        samples: Use only the first N rows.
        batch_size: Rows per batch of row files (a .safetensors batch runs as it is).
        loss: ``FILE.py:FN`` or ``module:FN``, ``fn(logits, labels) -> scalar``, instead of the model's loss.
        options: How raw rows become batches (templates, truncation, collator, pipeline).
    """

    model: str | Path
    data: str | Path
    samples: int | None = None
    batch_size: int = 1
    loss: str | None = None
    device: str = "cpu"
    dtype: Dtype = "float32"
    trust_remote_code: bool = False
    base: str | Path | None = None
    device_map: str | None = None
    options: DataOptions = field(default_factory=DataOptions)


@dataclass
class Loaded:
    """Everything ``Inputs`` names, loaded."""

    model: nn.Module
    tokenizer: Tokenizer | None
    loss_fn: LossFn | None
    batches: list[dict[str, torch.Tensor]]
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def load(inputs: Inputs) -> Loaded:
    """Load the model (or adapter on its base), tokenizer, loss and batches that ``inputs`` names."""
    loss_fn = load_loss_fn(inputs.loss) if inputs.loss else None
    model, tokenizer = load_model_and_tokenizer(
        inputs.model,
        base=inputs.base,
        device=inputs.device,
        dtype=inputs.dtype,
        trust_remote_code=inputs.trust_remote_code,
        device_map=inputs.device_map,
    )
    prepared = load_data(
        inputs.data,
        tokenizer=tokenizer,
        model=model,
        samples=inputs.samples,
        batch_size=inputs.batch_size,
        options=inputs.options,
        pad_token_id=resolve_pad_token_id(model, tokenizer),
        end_token_ids=default_end_token_ids(model, tokenizer),
    )
    return Loaded(model, tokenizer, loss_fn, prepared.batches, prepared.data, prepared.notes)


def check_files(
    inputs: Inputs,
    *,
    options: CheckOptions | None = None,
    params: bool = False,
    lr: float = DEFAULT_LR,
    max_grad_norm: float = DEFAULT_MAX_GRAD_NORM,
    **keywords: Unpack[CheckKeywords],
) -> Report:
    """``gradscope check``: the masking check of every batch, and with ``params`` the parameter pass on the first.

    ``options`` (and the keywords, which override its fields) are ``check``'s; the loss, the response and
    instruction templates and ``train_on`` come from ``inputs`` instead. Roles of tokenized batches without a role
    tensor come from ``roles_from`` (the raw rows they were made from), those templates, or the chat template.
    """
    o = check_options(options, keywords)
    chosen_probes(o.probes, o.accumulate, o.windows)  # bad probe names and depths fail before the model loads
    chosen_depth(o.depth)
    loaded = load(inputs)
    data = inputs.options
    o = replace(
        o,
        loss_fn=loaded.loss_fn,
        response_template=data.response_template,
        instruction_template=data.instruction_template,
        train_on=data.train_on,
    )
    report = check_batches(loaded.model, loaded.batches, tokenizer=loaded.tokenizer, source=str(inputs.data), options=o)
    report.data = loaded.data
    report.notes = loaded.notes + report.notes
    if params:
        first = _first_batch(report, loaded, "the parameter-gradient pass")
        grads(
            loaded.model,
            first,
            loss_fn=loaded.loss_fn,
            lr=lr,
            max_grad_norm=max_grad_norm,
            keep_dropout=o.keep_dropout,
            report=report,
            source=str(inputs.data),
        )
    return report


def inspect_files(
    inputs: Inputs, row: int = 0, *, keep_dropout: bool = False, roles_from: str | Path | None = None
) -> tuple[Report, SampleReport]:
    """``gradscope inspect``: one row, run inside the batch it belongs to so that its loss weights are training's."""
    if row < 0:
        raise DataError(f"row {row}: rows count from 0")
    if Path(inputs.data).suffix != ".safetensors":
        inputs = replace(inputs, samples=(row // inputs.batch_size + 1) * inputs.batch_size)
    report = check_files(inputs, keep_dropout=keep_dropout, roles_from=roles_from)
    if row >= len(report.samples):
        raise DataError(
            f"there is no row {row}: the data has {len(report.samples)}", path=inputs.data, hint="pick a row from 0"
        )
    return report, report.samples[row]


def grads_files(
    inputs: Inputs,
    *,
    keep_dropout: bool = False,
    lr: float = DEFAULT_LR,
    max_grad_norm: float = DEFAULT_MAX_GRAD_NORM,
    overfit: int = 0,
    optimizer: Optimizer = "adamw",
) -> Report:
    """``gradscope grads``: the gradient at the weights on the first batch, then ``overfit`` steps on it if asked."""
    loaded = load(inputs)
    model, first, loss_fn, source = loaded.model, loaded.batches[0], loaded.loss_fn, str(inputs.data)
    report = grads(
        model, first, lr=lr, max_grad_norm=max_grad_norm, loss_fn=loss_fn, keep_dropout=keep_dropout, source=source
    )
    _first_batch(report, loaded, "gradscope grads")
    if overfit:
        overfit_batch(
            model,
            first,
            steps=overfit,
            lr=lr,
            optimizer=optimizer,
            report=report,
            loss_fn=loss_fn,
            keep_dropout=keep_dropout,
            source=source,
        )
    return report


def verify_files(inputs: Inputs, *, directions: int = 2, parameters: int = 4, seed: int = 0) -> Report:
    """``gradscope verify``: autograd against finite differences on the first batch (the model loads in float32)."""
    loaded = load(replace(inputs, dtype="float32"))
    report = verify(
        loaded.model,
        loaded.batches[0],
        loss_fn=loaded.loss_fn,
        directions=directions,
        parameters=parameters,
        seed=seed,
        source=str(inputs.data),
    )
    _first_batch(report, loaded, "gradscope verify")
    return report


def roles_files(
    tokenizer_dir: str | Path, data: str | Path, *, samples: int | None = None, options: DataOptions | None = None
) -> RolesReport:
    """``gradscope roles``: how raw rows split into prompt and completion tokens under a tokenizer; no model runs."""
    tokenizer_dir = Path(tokenizer_dir)
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir.is_dir() else None
    if tokenizer is None:
        raise DataError(
            "no tokenizer files in this directory", path=tokenizer_dir, hint="give a model or tokenizer directory"
        )
    ends = frozenset(config_end_token_ids(tokenizer_dir) | default_end_token_ids(None, tokenizer))
    options = options or DataOptions()
    rows = load_role_rows(data, tokenizer, samples=samples, options=options, end_token_ids=ends)
    texts = [[tokenizer.decode([i]) for i in row.input_ids] for row in rows]
    info = {"source": str(data), "rows": len(rows), "train_on": options.train_on, "max_length": options.max_length}
    if notes := row_notes(rows):
        info["notes"] = notes
    return RolesReport(rows, texts, info)


def _first_batch(report: Report, loaded: Loaded, what: str) -> dict[str, torch.Tensor]:
    """Parameter passes run on one batch, one optimizer step's worth: the first; say so when the data holds more."""
    report.data = report.data or loaded.data
    if len(loaded.batches) > 1:
        rows = len(loaded.batches[0]["input_ids"])
        report.notes.append(
            f"{what} ran on the first batch ({rows} row(s)) of {len(loaded.batches)}; use `batch_size` to size it"
        )
    return loaded.batches[0]
