"""``gradscope check`` and ``gradscope inspect``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import typer
from rich.console import Group

from gradscope.cli.app import app, emit, exit_code, guarded, in_flags, print_view, write
from gradscope.cli.options import (
    DEFAULT_LR,
    DEFAULT_MAX_GRAD_NORM,
    AllowUnknownOpt,
    AssistantOnlyOpt,
    BaseOpt,
    BatchSizeOpt,
    CollateInput,
    CollateInputOpt,
    CollateOpt,
    CompletionOnlyOpt,
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
    OutputOpt,
    PackingOpt,
    PaddingFreeOpt,
    Pipeline,
    PipelineOpt,
    RemoteOpt,
    ResponseOpt,
    RolesFromOpt,
    SamplesOpt,
    ShowOpt,
    StrictOpt,
    TrainOn,
    TrainOnOpt,
    TrlConfigOpt,
    TruncationOpt,
    data_options,
    inputs,
    parse_probes,
    quiet_transformers,
    writable,
)
from gradscope.constants import WINDOWS_PER_ROW
from gradscope.modes import Depth
from gradscope.render.check import CheckView
from gradscope.render.grads import GradsView
from gradscope.render.inspect import InspectView


@app.command()
def check(
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
    output_format: FormatOpt = Format.text,
    output: OutputOpt = None,
    html: HtmlOpt = None,
    strict: StrictOpt = False,
    allow_unknown_roles: AllowUnknownOpt = False,
    show: ShowOpt = 8,
    response_template: ResponseOpt = None,
    instruction_template: InstructionOpt = None,
    roles_from: RolesFromOpt = None,
    train_on: TrainOnOpt = TrainOn.all_assistant,
    max_length: MaxLengthOpt = None,
    truncation_mode: TruncationOpt = None,
    collate: CollateOpt = None,
    collate_input: CollateInputOpt = CollateInput.raw,
    pipeline: PipelineOpt = Pipeline.reference,
    trl_config: TrlConfigOpt = None,
    completion_only_loss: CompletionOnlyOpt = None,
    assistant_only_loss: AssistantOnlyOpt = None,
    packing: PackingOpt = None,
    padding_free: PaddingFreeOpt = None,
    base: BaseOpt = None,
    params: Annotated[
        bool,
        typer.Option("--params", help="Also run the parameter-gradient pass (as gradscope grads) on the first batch."),
    ] = False,
    lr: LrOpt = DEFAULT_LR,
    max_grad_norm: MaxNormOpt = DEFAULT_MAX_GRAD_NORM,
    probes: Annotated[
        str, typer.Option("--probes", help="Structural probes, comma-separated: causal,packing,weights (or all, none).")
    ] = "all",
    accumulate: Annotated[
        int | None,
        typer.Option(
            "--accumulate", min=1, help="Also run each batch as K accumulated micro-batches and compare gradients."
        ),
    ] = None,
    depth: Annotated[
        str,
        typer.Option(
            "--depth",
            help="full: backward through the network "
            "(layer norms, causal and packing probes); logits: masking only, a forward and the "
            "loss's own backward (docs/performance.md).",
        ),
    ] = "full",
    windows: Annotated[
        int,
        typer.Option(
            "--windows",
            min=0,
            help="Random-projection windows per "
            "row for the causal and packing probes, on top of the free screen (each about one "
            "activation-only backward).",
        ),
    ] = WINDOWS_PER_ROW,
) -> None:
    """Run MODEL forward and backward on DATA and report which tokens the loss trains, and every leak."""
    from gradscope.verbs.files import check_files
    from gradscope.verbs.options import CheckOptions

    options = data_options(
        response_template,
        instruction_template,
        train_on,
        max_length,
        truncation_mode,
        collate,
        collate_input,
        pipeline,
        trl_config,
        completion_only_loss=completion_only_loss,
        assistant_only_loss=assistant_only_loss,
        packing=packing,
        padding_free=padding_free,
    )
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
    checking = CheckOptions(
        keep_dropout=keep_dropout,
        probes=parse_probes(probes),
        accumulate=accumulate,
        windows=windows,
        roles_from=roles_from,
        depth=cast(Depth, depth),  # check_files refuses any other depth with an Error: line
    )
    report = guarded(lambda: check_files(named, options=checking, params=params, lr=lr, max_grad_norm=max_grad_norm))
    views = [CheckView(report, max_samples=show)] + ([GradsView(report)] if params else [])
    raise emit(report, output_format.value, output, Group(*views), strict, html, allow_unknown_roles)


@app.command()
def inspect(
    model: ModelArg,
    data: DataArg,
    row: Annotated[int, typer.Option("--row", min=0, help="The row to show (0-based).")] = 0,
    batch_size: BatchSizeOpt = 1,
    loss: LossOpt = None,
    device: DeviceOpt = "cpu",
    device_map: DeviceMapOpt = None,
    dtype: DTypeOpt = DType.float32,
    trust_remote_code: RemoteOpt = False,
    keep_dropout: DropoutOpt = False,
    response_template: ResponseOpt = None,
    instruction_template: InstructionOpt = None,
    roles_from: RolesFromOpt = None,
    train_on: TrainOnOpt = TrainOn.all_assistant,
    max_length: MaxLengthOpt = None,
    truncation_mode: TruncationOpt = None,
    base: BaseOpt = None,
    allow_unknown_roles: AllowUnknownOpt = False,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            callback=writable,
            help="Also write this row's view (token strip, heat map, findings) as one self-contained HTML page.",
        ),
    ] = None,
) -> None:
    """Show one row in detail: a per-token table and a layers x positions heat map of gradient norms."""
    from gradscope.verbs.files import inspect_files

    options = data_options(response_template, instruction_template, train_on, max_length, truncation_mode)
    named = inputs(
        model,
        data,
        samples=None,
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
    report, sample = guarded(lambda: inspect_files(named, row, keep_dropout=keep_dropout, roles_from=roles_from))
    in_flags(report)
    write(html, lambda: report.to_html(sample=sample.index))
    print_view(InspectView(report, sample))
    raise typer.Exit(exit_code(report, strict=False, allow_unknown_roles=allow_unknown_roles))
