"""The flags that several commands share, declared once, and their parsing into library arguments."""

from __future__ import annotations

import logging as std_logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gradscope.cli.app import fail
from gradscope.cli.output import check_writable
from gradscope.constants import DEFAULT_LR, DEFAULT_MAX_GRAD_NORM, PROBES  # noqa: F401  (defaults of LrOpt, MaxNormOpt)
from gradscope.errors import OutputError

if TYPE_CHECKING:  # torch-heavy: imported when a command runs, never for --help or a usage error
    from gradscope.data.pipelines import DataOptions
    from gradscope.verbs.files import Inputs


class Format(str, Enum):
    text = "text"
    json = "json"
    junit = "junit"


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Optimizer(str, Enum):
    adamw = "adamw"
    sgd = "sgd"


class TrainOn(str, Enum):
    all_assistant = "all-assistant"
    last_assistant = "last-assistant"


class Truncation(str, Enum):
    keep_start = "keep_start"
    keep_end = "keep_end"


class Pipeline(str, Enum):
    reference = "reference"
    trl = "trl"


class CollateInput(str, Enum):
    raw = "raw"
    tokens = "tokens"


ModelArg = Annotated[
    Path,
    typer.Argument(
        help="Local Hugging Face model directory (config.json "
        "+ *.safetensors), or a PEFT adapter directory (adapter_config.json)."
    ),
]
DataArg = Annotated[
    Path,
    typer.Argument(
        help="A .safetensors batch, pre-tokenized .jsonl, or raw rows: .jsonl, .json, "
        ".parquet or a saved dataset directory."
    ),
]
SamplesOpt = Annotated[int | None, typer.Option("--samples", min=1, help="Use only the first N rows.")]
BatchSizeOpt = Annotated[
    int, typer.Option("--batch-size", min=1, help="JSONL rows per batch (a .safetensors batch runs as is).")
]
LossOpt = Annotated[
    str | None,
    typer.Option("--loss", help="FILE.py:FN or module:FN, fn(logits, labels) -> scalar, instead of the model's loss."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="torch device to run on (cpu, cuda, cuda:N, mps).")]
DeviceMapOpt = Annotated[
    str | None,
    typer.Option(
        "--device-map",
        help="Spread the model over the available devices through "
        "accelerate (auto, balanced, sequential); replaces --device when given.",
    ),
]
DTypeOpt = Annotated[DType, typer.Option("--dtype", help="Model dtype (gradient norms are always computed in fp32).")]
RemoteOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow code from the model directory to run.")]
DropoutOpt = Annotated[
    bool, typer.Option("--keep-dropout", help="Leave dropout on (the report is then not deterministic).")
]
ResponseOpt = Annotated[
    str | None,
    typer.Option(
        "--response-template",
        help="Text that starts "
        "each completion in 'text' rows, and in a tokenized batch without roles (found as tokens).",
    ),
]
InstructionOpt = Annotated[
    str | None,
    typer.Option("--instruction-template", help="Text that starts each prompt turn in multi-turn 'text' rows."),
]
RolesFromOpt = Annotated[
    Path | None,
    typer.Option(
        "--roles-from",
        help="The raw rows (.jsonl, .json, .parquet, dataset) a "
        "tokenized batch was made from: roles are read from them, matched token by token.",
    ),
]
TrainOnOpt = Annotated[
    TrainOn, typer.Option("--train-on", help="Which assistant turns of 'messages' rows are completion.")
]
MaxLengthOpt = Annotated[
    int | None, typer.Option("--max-length", min=1, help="Truncate each row to N tokens, as the trainer would.")
]
TruncationOpt = Annotated[
    Truncation | None, typer.Option("--truncation-mode", help="keep_start (default) or keep_end.")
]
CollateOpt = Annotated[
    str | None, typer.Option("--collate", help="FILE.py:FN or module:FN, your collator: fn(rows) -> batch dict.")
]
CollateInputOpt = Annotated[
    CollateInput, typer.Option("--collate-input", help="What --collate receives: raw rows or gradscope's tokens.")
]
PipelineOpt = Annotated[
    Pipeline,
    typer.Option("--pipeline", help="Who builds the labels of raw rows: gradscope's reference masking, or TRL."),
]
TrlConfigOpt = Annotated[
    Path | None, typer.Option("--trl-config", help="JSON file of SFTConfig options for --pipeline trl.")
]
CompletionOnlyOpt = Annotated[
    bool | None,
    typer.Option("--completion-only-loss/--no-completion-only-loss", help="SFTConfig.completion_only_loss."),
]
AssistantOnlyOpt = Annotated[
    bool | None, typer.Option("--assistant-only-loss/--no-assistant-only-loss", help="SFTConfig.assistant_only_loss.")
]
PackingOpt = Annotated[bool | None, typer.Option("--packing/--no-packing", help="SFTConfig.packing.")]
PaddingFreeOpt = Annotated[
    bool | None, typer.Option("--padding-free/--no-padding-free", help="SFTConfig.padding_free.")
]
BaseOpt = Annotated[
    Path | None,
    typer.Option(
        "--base",
        help="Base model directory of a PEFT adapter (default: base_model_name_or_path in its adapter_config.json).",
    ),
]


def writable(path: Path | None) -> Path | None:
    """Refuse a report path gradscope could not write before anything runs (one Error line, exit status 2)."""
    if path is not None:
        try:
            check_writable(path)
        except OutputError as err:
            raise fail(err) from None
    return path


FORMAT_HELP = (
    "text: a terminal report; json: schema v1 on stdout; junit: JUnit XML on stdout (one test case per sample per "
    "check)."
)
FormatOpt = Annotated[Format, typer.Option("--format", help=FORMAT_HELP)]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", callback=writable, help="Also write the JSON report to this file.")
]
HtmlOpt = Annotated[
    Path | None,
    typer.Option(
        "--html", callback=writable, help="Also write the report as one self-contained HTML page to this file."
    ),
]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Exit 1 on warnings too.")]
AllowUnknownOpt = Annotated[
    bool,
    typer.Option(
        "--allow-unknown-roles",
        help="Exit 0 on a report that is not verified (some rows' roles unknown, so their prompt was not checked); "
        "it still says not verified.",
    ),
]
LrOpt = Annotated[
    float, typer.Option("--lr", min=0.0, help="Learning rate of the update-to-weight ratios and of the overfit steps.")
]
MaxNormOpt = Annotated[
    float, typer.Option("--max-grad-norm", min=0.0, help="Clipping threshold the clip factor is computed for.")
]
ShowOpt = Annotated[int, typer.Option("--show", min=0, help="Token strips to show in the terminal report.")]


def data_options(
    response_template: str | None = None,
    instruction_template: str | None = None,
    train_on: TrainOn = TrainOn.all_assistant,
    max_length: int | None = None,
    truncation_mode: Truncation | None = None,
    collate: str | None = None,
    collate_input: CollateInput = CollateInput.raw,
    pipeline: Pipeline = Pipeline.reference,
    trl_config: Path | None = None,
    **trl_flags: bool | None,
) -> DataOptions:
    """The data options from parsed flags; TRL flags left unset (None) defer to --trl-config and TRL's defaults."""
    from gradscope.data.pipelines import DataOptions

    return DataOptions(
        response_template=response_template,
        instruction_template=instruction_template,
        train_on=train_on.value,
        max_length=max_length,
        truncation_mode=truncation_mode.value if truncation_mode else None,
        collate=collate,
        collate_input=collate_input.value,
        pipeline=pipeline.value,
        trl_config=trl_config,
        trl_options={k: v for k, v in trl_flags.items() if v is not None},
    )


def parse_probes(spec: str) -> tuple[str, ...]:
    """``causal,packing`` -> ("causal", "packing"); ``all`` and ``none`` as said."""
    if spec.strip() == "all":
        return PROBES
    if spec.strip() == "none":
        return ()
    return tuple(name.strip() for name in spec.split(",") if name.strip())


IMPORT_NOTICES = ("torchao", "torch.utils._pytree")
"""Loggers that speak when transformers imports an optional package it found installed (torchao's native
libraries that do not load, torch's deprecation notice for the enums torchao registers): nothing gradscope uses."""


def quiet_transformers() -> None:
    """Keep transformers' progress bars and advice, and the import notices of the optional packages it loads, off
    the terminal: stderr is for gradscope's diagnostics."""
    for name in IMPORT_NOTICES:
        std_logging.getLogger(name).setLevel(std_logging.ERROR)
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()  # TRL's dataset preparation (--pipeline trl)
    else:  # read by datasets when a command imports it; importing it here would cost every command its start-up
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def inputs(
    model: Path,
    data: Path,
    *,
    samples: int | None,
    batch_size: int,
    loss: str | None,
    device: str,
    dtype: DType,
    trust_remote_code: bool,
    options: DataOptions,
    base: Path | None = None,
    device_map: str | None = None,
) -> Inputs:
    """The library's Inputs from the flags every model-running command shares."""
    from gradscope.verbs.files import Inputs

    return Inputs(
        model,
        data,
        samples=samples,
        batch_size=batch_size,
        loss=loss,
        device=device,
        dtype=dtype.value,
        trust_remote_code=trust_remote_code,
        base=base,
        device_map=device_map,
        options=options,
    )
