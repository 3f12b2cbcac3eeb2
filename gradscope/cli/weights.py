"""``gradscope grads`` and ``gradscope verify``: the gradient that reaches the weights."""

from __future__ import annotations

from typing import Annotated

import typer

from gradscope.cli.app import app, emit, guarded
from gradscope.cli.options import (
    DEFAULT_LR,
    DEFAULT_MAX_GRAD_NORM,
    BaseOpt,
    BatchSizeOpt,
    DataArg,
    DeviceMapOpt,
    DeviceOpt,
    DropoutOpt,
    DType,
    DTypeOpt,
    Format,
    FormatOpt,
    HtmlOpt,
    InstructionOpt,
    LossOpt,
    LrOpt,
    MaxLengthOpt,
    MaxNormOpt,
    ModelArg,
    Optimizer,
    OutputOpt,
    RemoteOpt,
    ResponseOpt,
    SamplesOpt,
    StrictOpt,
    TrainOn,
    TrainOnOpt,
    TruncationOpt,
    data_options,
    inputs,
    quiet_transformers,
)
from gradscope.render.grads import GradsView, VerifyView


@app.command()
def grads(
    model: ModelArg,
    data: DataArg,
    samples: SamplesOpt = None,
    batch_size: BatchSizeOpt = 1,
    loss: LossOpt = None,
    device: DeviceOpt = "cpu",
    device_map: DeviceMapOpt = None,
    dtype: DTypeOpt = DType.float32,
    trust_remote_code: RemoteOpt = False,
    keep_dropout: DropoutOpt = False,
    base: BaseOpt = None,
    lr: LrOpt = DEFAULT_LR,
    max_grad_norm: MaxNormOpt = DEFAULT_MAX_GRAD_NORM,
    overfit: Annotated[
        int,
        typer.Option(
            "--overfit",
            min=0,
            help="Also take N optimizer steps on the batch alone (on a copy) and report the loss curve.",
        ),
    ] = 0,
    optimizer: Annotated[
        Optimizer,
        typer.Option("--optimizer", help="Optimizer of the overfit steps (AdamW with weight decay 0, or SGD)."),
    ] = Optimizer.adamw,
    output_format: FormatOpt = Format.text,
    output: OutputOpt = None,
    html: HtmlOpt = None,
    strict: StrictOpt = False,
    response_template: ResponseOpt = None,
    instruction_template: InstructionOpt = None,
    train_on: TrainOnOpt = TrainOn.all_assistant,
    max_length: MaxLengthOpt = None,
    truncation_mode: TruncationOpt = None,
) -> None:
    """The gradient that reaches the weights: per-module norms, clipping, update ratios, untrained parameters."""
    from gradscope.verbs.files import grads_files

    options = data_options(response_template, instruction_template, train_on, max_length, truncation_mode)
    named = inputs(
        model,
        data,
        samples=samples,
        batch_size=batch_size,
        loss=loss,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        options=options,
        base=base,
        device_map=device_map,
    )
    quiet_transformers()
    report = guarded(
        lambda: grads_files(
            named,
            keep_dropout=keep_dropout,
            lr=lr,
            max_grad_norm=max_grad_norm,
            overfit=overfit,
            optimizer=optimizer.value,
        )
    )
    raise emit(report, output_format.value, output, GradsView(report), strict, html)


@app.command()
def verify(
    model: ModelArg,
    data: DataArg,
    samples: SamplesOpt = None,
    batch_size: BatchSizeOpt = 1,
    loss: LossOpt = None,
    device: DeviceOpt = "cpu",
    trust_remote_code: RemoteOpt = False,
    base: BaseOpt = None,
    directions: Annotated[
        int,
        typer.Option("--directions", min=0, help="Random directions per tensor, after the gradient's own direction."),
    ] = 2,
    param_sample: Annotated[
        int,
        typer.Option(
            "--param-sample", min=0, help="Parameters to check besides the input embeddings, spread over the model."
        ),
    ] = 4,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**63 - 1, help="Seed of the random directions.")] = 0,
    output_format: FormatOpt = Format.text,
    output: OutputOpt = None,
    strict: StrictOpt = False,
    response_template: ResponseOpt = None,
    instruction_template: InstructionOpt = None,
    train_on: TrainOnOpt = TrainOn.all_assistant,
    max_length: MaxLengthOpt = None,
    truncation_mode: TruncationOpt = None,
) -> None:
    """Check autograd's gradient of the loss against finite differences on a float64 copy of the model."""
    from gradscope.verbs.files import verify_files

    options = data_options(response_template, instruction_template, train_on, max_length, truncation_mode)
    named = inputs(
        model,
        data,
        samples=samples,
        batch_size=batch_size,
        loss=loss,
        device=device,
        dtype=DType.float32,
        trust_remote_code=trust_remote_code,
        options=options,
        base=base,
    )
    quiet_transformers()
    report = guarded(
        lambda: verify_files(named, directions=directions, parameters=param_sample, seed=seed),
        "comparing autograd with finite differences…",
    )
    raise emit(report, output_format.value, output, VerifyView(report), strict)
