"""``--pipeline trl``: the batches TRL's own SFT preparation and collator build, with gradscope's roles matched
onto them."""

from __future__ import annotations

import copy
import dataclasses
import json
import stat
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from gradscope.data import deadline
from gradscope.data.pipelines import DataOptions, Prepared, attach_roles, role_rows, row_notes
from gradscope.data.roles import RoleRow, RoleSpec
from gradscope.errors import DataError, first_line
from gradscope.tokenizer import Tokenizer

TRL_FLAGS = ("completion_only_loss", "assistant_only_loss", "packing", "padding_free", "max_length", "truncation_mode")


# --- TRL -------------------------------------------------------------------------------------------------------


def trl_config(options: DataOptions, batch_size: int, device: str, output_dir: str) -> Any:
    """The SFTConfig: the JSON file's options, then the flags, then what gradscope needs to read batches in order.

    Forced: sequential sampling and no shuffling (rows keep their order; labels do not depend on it), no mixed
    precision (no training happens), no logging or saving, a temporary output_dir.
    """
    from trl import SFTConfig

    values = _config_file(options.trl_config)
    values.setdefault("per_device_train_batch_size", batch_size)
    values.update(options.trl_options)
    if options.max_length is not None:
        values["max_length"] = options.max_length
    if options.truncation_mode is not None:
        values["truncation_mode"] = options.truncation_mode
    forced = dict(
        output_dir=output_dir,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=device == "cpu",
        train_sampling_strategy="sequential",
        shuffle_dataset=False,
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
        dataset_num_proc=None,
    )
    known = {f.name for f in dataclasses.fields(SFTConfig)}  # older versions lack some (rows are matched in any order)
    values.update({k: v for k, v in forced.items() if k in known})
    try:
        with warnings.catch_warnings():  # SFTConfig's own default gradient_checkpointing=True warns in transformers 5
            warnings.simplefilter("ignore", FutureWarning)
            return SFTConfig(**values)
    except (TypeError, ValueError) as err:
        raise DataError(
            f"SFTConfig rejects these options: {err}",
            path=options.trl_config,
            hint="use SFTConfig's field names and values",
        ) from err


CONFIG_BYTES = 1 << 20
"""The largest --trl-config read (SFTConfig's options are a few hundred bytes)."""


def _config_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        kind = Path(path).stat().st_mode
        if not stat.S_ISREG(kind):  # a FIFO would block, /dev/zero never end: refused by type before opening
            raise DataError(
                "the TRL config is not a regular file (a FIFO, device or directory)",
                path=path,
                hint="give a JSON file of SFTConfig options",
            )
        with open(path, "rb") as f:
            raw = f.read(CONFIG_BYTES + 1)
        if len(raw) > CONFIG_BYTES:
            raise DataError(
                f"the TRL config is larger than {CONFIG_BYTES} bytes",
                path=path,
                hint="give a JSON file of SFTConfig options",
            )
        values = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise DataError(
            f"cannot read the TRL config: {err}", path=path, hint="give a JSON object of SFTConfig options"
        ) from err
    if not isinstance(values, dict):
        raise DataError("the TRL config must be a JSON object of SFTConfig options", path=path)
    return values


def require_trl() -> None:
    """Raise a clear InputError when TRL (or datasets) is not installed."""
    try:
        import datasets  # noqa: F401
        import trl  # noqa: F401
    except ImportError as err:
        raise DataError(
            f"`pipeline` trl needs TRL and datasets ({err})",
            hint="install the trl extra: pip install -e '.[trl]' in a clone of gradscope",
        ) from err


def trl_batches(
    model: nn.Module,
    tokenizer: Tokenizer,
    raw: Sequence[Mapping[str, Any]],
    spec: RoleSpec,
    options: DataOptions,
    batch_size: int,
) -> Prepared:
    """TRL's own SFT data preparation and collator on the rows, with gradscope's roles matched onto its batches.

    SFTTrainer is built on the model (it patches the model's forward and syncs its pad token; both are put back) and
    a copy of the tokenizer; gradscope then reads ``trainer.get_train_dataloader()``, the batches ``train()`` sees.
    """
    require_trl()
    dataset = _dataset(raw)
    rows = role_rows(dataset.to_list(), tokenizer, spec)  # the rows as TRL sees them (missing fields as None)
    device = str(next(model.parameters()).device)
    trl_tokenizer = copy.deepcopy(tokenizer)
    rendering = _bounded_renders(trl_tokenizer)
    with tempfile.TemporaryDirectory() as out, _restored(model):
        config = trl_config(options, batch_size, device, out)
        try:
            trainer = _sft_trainer(model, trl_tokenizer, config, dataset)
            batches = [dict(b) for b in trainer.get_train_dataloader()]
        except deadline.RenderTimeout:
            raise _render_timeout(rendering, dataset.to_list(), spec.source) from None
    if trainer.chat_template is not None:  # TRL swapped in its training template (assistant_only_loss)
        spec = copy.copy(spec)
        spec.chat_template = trainer.chat_template
        rows = role_rows(dataset.to_list(), tokenizer, spec)
    return _trl_prepared(batches, rows, config, trainer)


def _bounded_renders(tokenizer: Any) -> list:  # gradscope's copy of transformers' tokenizer, given to TRL
    """Bound each chat-template rendering TRL asks of ``tokenizer`` (gradscope's copy, given to TRL alone) as
    gradscope bounds its own; the returned list holds the conversation being rendered, to name its row."""
    render = tokenizer.apply_chat_template
    rendering: list = []

    def apply_chat_template(conversation: Any, *args: Any, **kwargs: Any) -> Any:
        rendering[:] = [conversation]
        with deadline.bounded(deadline.TEMPLATE_SECONDS):
            return render(conversation, *args, **kwargs)

    tokenizer.apply_chat_template = apply_chat_template
    return rendering


def _render_timeout(rendering: list, rows: list[dict[str, Any]], source: str | None) -> DataError:
    """The error for a rendering TRL started that did not end, naming the row whose conversation it was."""
    conversation = rendering[0] if rendering else None
    row = next((i for i, r in enumerate(rows) if conversation is not None and conversation in _conversations(r)), None)
    size = f"{len(conversation)} message(s)" if isinstance(conversation, list) else "a conversation"
    return DataError(
        f"the chat template did not finish rendering {size} within {deadline.TEMPLATE_SECONDS:g} s in TRL's data "
        "preparation",
        path=source,
        row=row,
        hint="a loop that never ends? fix the chat_template in tokenizer_config.json (TRL renders it with the row's "
        "chat_template_kwargs and tools)",
    )


def _conversations(row: dict[str, Any]) -> list[Any]:
    """What TRL renders of a row: its messages, its prompt, its prompt and completion."""
    prompt, completion = row.get("prompt"), row.get("completion")
    both = [prompt + completion] if isinstance(prompt, list) and isinstance(completion, list) else []
    return [c for c in (row.get("messages"), prompt, *both) if c is not None]


def _dataset(raw: Sequence[Mapping[str, Any]]) -> Any:
    from datasets import Dataset

    try:
        return Dataset.from_list([dict(r) for r in raw])
    except (ValueError, TypeError) as err:  # pyarrow cannot give the rows one schema
        raise DataError(
            f"the rows do not make one datasets.Dataset, as TRL needs: {first_line(err)}",
            hint="give every row the same fields with the same types",
        ) from err


def _trl_prepared(batches: list[dict], rows: list[RoleRow], config: Any, trainer: Any) -> Prepared:
    wrapped = config.packing and config.packing_strategy != "bfd"
    pad_id = trainer.processing_class.pad_token_id
    used: set[int] = set()
    out: list[dict[str, Any]] = []
    for batch in batches:
        batch, matched = attach_roles(batch, rows, pad_id, strict=not wrapped, count_cut=not wrapped)
        out.append({**batch, "use_cache": False})  # SFTTrainer.compute_loss passes it with every batch
        used |= matched
    notes = row_notes(rows)
    dropped = [r.index for r in rows if r.index not in used]
    if dropped:
        notes.append(
            f"TRL's data preparation left out row(s) {', '.join(map(str, dropped))}: it drops rows that truncation to "
            f"max_length={config.max_length} leaves without a trained token, so they train nothing"
        )
    if wrapped:
        notes.append(
            "packing_strategy='wrapped' splits rows across sequences: pieces gradscope "
            "cannot match to a row have no role"
        )
    data: dict[str, Any] = {
        "pipeline": "trl",
        "trl": {k: _jsonable(getattr(config, k)) for k in (*TRL_FLAGS, "packing_strategy")},
    }
    data["trl"]["completion_only_loss"] = trainer.completion_only_loss
    return Prepared(out, data, notes)


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str, type(None))) else str(value)


def _sft_trainer(
    model: nn.Module, tokenizer: Any, config: Any, dataset: Any
) -> Any:  # TRL: transformers' own tokenizer
    from jinja2 import TemplateError
    from trl import SFTTrainer
    from trl.chat_template_utils import has_generation_markers

    template = getattr(tokenizer, "chat_template", None)
    try:
        return SFTTrainer(
            model=model,  # type: ignore[arg-type]  # any causal LM module works; TRL's annotation names PreTrainedModel
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    except (ValueError, RuntimeError, TypeError, KeyError, TemplateError) as err:  # TRL rejecting the setup or data
        if config.assistant_only_loss and not (template and has_generation_markers(template)):
            raise DataError(
                "assistant_only_loss=True needs a chat template with {% generation %} markers, and this tokenizer's "
                "template has none (nor is it one TRL knows how to patch): the assistant mask would be all zeros and "
                f"every sample would train nothing (no_loss). TRL says: {first_line(err)}",
                hint="wrap each assistant turn's content and its closing token in {% generation "
                "%}...{% endgeneration %}, "
                "or use completion_only_loss with prompt/completion rows",
            ) from err
        raise DataError(
            f"TRL's SFTTrainer rejects this setup: {first_line(err)}", hint="fix the TRL options or the data"
        ) from err


@contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Put back what building an SFTTrainer changes on the model: its forward (TRL's fused LM head), its pad/eos ids,
    its use_cache (transformers' Trainer sets it from TrainingArguments) and its device."""
    had_forward = "forward" in model.__dict__
    forward = model.__dict__.get("forward")
    configs = [c for c in (getattr(model, "config", None), getattr(model, "generation_config", None)) if c is not None]
    saved = [(c, k, getattr(c, k, None)) for c in configs for k in ("pad_token_id", "eos_token_id", "use_cache")]
    device = next(model.parameters()).device
    try:
        yield
    finally:
        if had_forward:
            model.__dict__["forward"] = forward
        else:
            model.__dict__.pop("forward", None)
        for c, k, v in saved:
            setattr(c, k, v)
        if next(model.parameters()).device != device:
            model.to(device)
