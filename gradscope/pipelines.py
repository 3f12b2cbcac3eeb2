"""Pipelines: from raw rows to the batches a trainer would see, with gradscope's roles attached.

- ``reference``: gradscope's own masking (train the completion and the token closing it), to show what correct looks
  like and to check the model and loss path.
- ``collate``: the user's collator (``--collate FILE.py:FN`` or ``module:FN``) builds each batch.
- ``trl``: TRL's own SFT data preparation and collator, so the labels are exactly those TRL trains.

Whatever builds the batch, the roles come from gradscope's derivation (``gradscope.roles``) and are matched onto the
batch's tokens (``gradscope_roles``, ``gradscope_cut``); the check then compares them with the gradient.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradscope.batch import COMPLETION, CUT_KEY, ROLE_CODES_KEY, ROW_KEY, UNKNOWN, collate, real_tokens
from gradscope.errors import DataError
from gradscope.roles import RoleRow, RoleSpec, derive_rows

PIPELINES = ("reference", "trl")
TRL_FLAGS = ("completion_only_loss", "assistant_only_loss", "packing", "padding_free", "max_length", "truncation_mode")


@dataclass
class DataOptions:
    """How raw rows become batches (the command line's data options).

    Attributes:
        response_template / instruction_template: Split ``text`` rows into turns.
        train_on: ``all-assistant`` or ``last-assistant`` for ``messages`` rows.
        max_length / truncation_mode: Truncate each row as the trainer would (``keep_start`` or ``keep_end``).
        collate: ``FILE.py:FN`` or ``module:FN``, the user's collator.
        collate_input: What the collator receives: ``raw`` rows or ``tokens`` (gradscope's tokenization).
        pipeline: ``reference`` or ``trl``.
        trl_config: A JSON file of SFTConfig options.
        trl_options: SFTConfig options given as flags; they override the file.
    """

    response_template: str | None = None
    instruction_template: str | None = None
    train_on: str = "all-assistant"
    max_length: int | None = None
    truncation_mode: str | None = None
    collate: str | None = None
    collate_input: str = "raw"
    pipeline: str = "reference"
    trl_config: Path | None = None
    trl_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """Batches ready for ``check_batches``, what the report should say about the data, and notes."""

    batches: list[dict[str, torch.Tensor]]
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def role_rows(rows: Sequence[Mapping[str, Any]], tokenizer: Any, spec: RoleSpec) -> list[RoleRow]:
    """Every raw row tokenized with its roles (``roles.derive`` on each, the tokenizer called once per batch)."""
    return derive_rows(rows, tokenizer, spec)


# --- reference -------------------------------------------------------------------------------------------------


def reference_batches(rows: Sequence[RoleRow], batch_size: int, pad_token_id: int) -> list[dict[str, torch.Tensor]]:
    """gradscope's reference masking: labels on the completion tokens (the closing token included), -100 elsewhere."""
    return [_reference_batch(rows[s : s + batch_size], pad_token_id) for s in range(0, len(rows), batch_size)]


def _reference_batch(rows: Sequence[RoleRow], pad_token_id: int) -> dict[str, torch.Tensor]:
    items = [{"input_ids": r.input_ids, "labels": r.labels, ROLE_CODES_KEY: r.roles} for r in rows]
    batch = collate(items, pad_token_id)
    batch[CUT_KEY] = torch.tensor([r.cut for r in rows])
    return batch


# --- the user's collator ---------------------------------------------------------------------------------------


def collate_batches(
    fn: Callable[[list[Any]], Mapping[str, Any]],
    raw: Sequence[Mapping[str, Any]],
    rows: Sequence[RoleRow],
    truncated: Sequence[RoleRow],
    options: DataOptions,
    batch_size: int,
    pad_token_id: int,
) -> list[dict[str, torch.Tensor]]:
    """Run the user's collator on each group of rows and attach the derived roles to what it returns.

    With ``collate_input == "tokens"`` the collator gets gradscope's tokenization (``input_ids`` and
    ``completion_mask``, truncated to max_length), else the raw rows.
    """
    batches = []
    for start in range(0, len(rows), batch_size):
        group = rows[start : start + batch_size]
        if options.collate_input == "tokens":
            short = truncated[start : start + batch_size]
            inputs: list[Any] = [{"input_ids": r.input_ids, "completion_mask": r.completion_mask} for r in short]
        else:
            inputs = [dict(r) for r in raw[start : start + batch_size]]
        batch = _call_collator(fn, inputs, options.collate, start)
        batches.append(attach_roles(batch, group, pad_token_id, strict=True)[0])
    return batches


def _call_collator(fn: Callable, inputs: list[Any], spec: str | None, start: int) -> dict[str, torch.Tensor]:
    where = f"rows {start}–{start + len(inputs) - 1}"
    try:
        out = fn(inputs)
    except Exception as err:  # the user's code: any failure is bad input, not a gradscope bug
        raise DataError(f"the collator failed: {type(err).__name__}: {err}", path=spec, row=where) from err
    if not isinstance(out, Mapping) or "input_ids" not in out:
        raise DataError("the collator must return a dict with 'input_ids' (and 'labels')", path=spec, row=where)
    try:
        return {k: v if isinstance(v, torch.Tensor) else torch.tensor(v) for k, v in out.items()}
    except (TypeError, ValueError) as err:
        raise DataError(f"the collator returned a value that is not a tensor: {err}", path=spec, row=where) from err


# --- matching derived roles onto someone else's batch ----------------------------------------------------------


def attach_roles(
    batch: Mapping[str, torch.Tensor],
    rows: Sequence[RoleRow],
    pad_token_id: int | None,
    *,
    strict: bool,
    count_cut: bool = True,
) -> tuple[dict[str, torch.Tensor], set[int]]:
    """Give every token of a batch built by another pipeline the role gradscope derived for it.

    Each sequence (a row, or each document of a packed row, split where position_ids restart) is matched to the
    derived rows: whole, or truncated (a prefix or suffix of the row). Tokens that match nothing keep no role.

    Args:
        batch: The batch, with ``input_ids`` (B, T).
        rows: The derived rows the batch was built from.
        pad_token_id: Padding-free batches are padded with it; such tails are not reported as unmatched.
        strict: Raise when a sequence matches no row (else leave it without a role).
        count_cut: Count completion tokens missing from a truncated match as cut by truncation.

    Returns:
        The batch with ``gradscope_roles``, ``gradscope_cut`` and, when each batch row holds exactly one data row,
        ``gradscope_rows``; and the indices of the data rows that were matched.

    Raises:
        DataError: with strict, the first sequence that matches no row, with its first differing token.
    """
    ids = batch["input_ids"].cpu()
    codes = torch.full(ids.shape, UNKNOWN, dtype=torch.long)
    cut = torch.zeros(len(ids), dtype=torch.long)
    held: list[set[int]] = [set() for _ in range(len(ids))]
    matcher = _Matcher(rows)
    for b in range(len(ids)):
        for start, stop in _sequences(batch, b):
            seq = ids[b, start:stop].tolist()
            for offset, row, first, length in matcher.match(seq, strict, pad_token_id, b):
                codes[b, start + offset : start + offset + length] = torch.tensor(row.roles[first : first + length])
                held[b].add(row.index)
                if count_cut and length < len(row.input_ids):
                    cut[b] += row.roles.count(COMPLETION) - row.roles[first : first + length].count(COMPLETION)
    out = dict(batch)
    out[ROLE_CODES_KEY], out[CUT_KEY] = codes, cut
    if all(len(h) == 1 for h in held):
        out[ROW_KEY] = torch.tensor([min(h) for h in held])
    return out, matcher.used


def _sequences(batch: Mapping[str, torch.Tensor], b: int) -> list[tuple[int, int]]:
    """(start, stop) of each sequence in row b: runs of attention_mask 1, split where position_ids restart at 0."""
    length = batch["input_ids"].shape[1]
    real = real_tokens(batch)[b]
    starts = torch.zeros(length, dtype=torch.bool)
    positions = batch.get("position_ids")
    if isinstance(positions, torch.Tensor) and positions.dim() == 2:
        starts = positions[b].cpu() == 0
    out, begin = [], None
    for t in range(length):
        if begin is not None and (not real[t] or starts[t]):
            out.append((begin, t))
            begin = None
        if real[t] and begin is None:
            begin = t
    return out + ([(begin, length)] if begin is not None else [])


class _Matcher:
    """Finds which derived row (and which part of it) a token sequence is, trying the next row in order first."""

    def __init__(self, rows: Sequence[RoleRow]) -> None:
        self.rows, self.next, self.used = list(rows), 0, set()

    def match(self, seq: list[int], strict: bool, pad_token_id: int | None, b: int) -> Iterator[tuple[int, RoleRow, int, int]]:
        """Yield (offset in seq, row, first token of the row, length) for each piece of seq, left to right."""
        at = 0
        while at < len(seq):
            found = self._find(seq[at:], at == 0)
            if found is None:
                if strict and any(t != pad_token_id for t in seq[at:]):
                    raise self._mismatch(seq[at:], b, at)
                return
            row, first, length = found
            self.used.add(row.index)
            self.next = self.rows.index(row) + 1
            yield at, row, first, length
            at += length

    def _order(self) -> list[RoleRow]:
        return self.rows[self.next :] + self.rows[: self.next]

    def _find(self, rest: list[int], at_start: bool) -> tuple[RoleRow, int, int] | None:
        for row in self._order():  # whole rows first
            if rest[: len(row.input_ids)] == row.input_ids:
                return row, 0, len(row.input_ids)
        for row in self._order():  # then truncated ones: the start kept, or (a whole sequence) the end kept
            n = len(row.input_ids)
            if len(rest) < n and row.input_ids[: len(rest)] == rest:
                return row, 0, len(rest)
            if at_start and len(rest) < n and row.input_ids[n - len(rest) :] == rest:
                return row, n - len(rest), len(rest)
        return None

    def _mismatch(self, rest: list[int], b: int, at: int) -> DataError:
        expected = self.rows[min(self.next, len(self.rows) - 1)]
        p = next((i for i, (x, y) in enumerate(zip(rest, expected.input_ids)) if x != y), min(len(rest), len(expected.input_ids)))
        got = rest[p] if p < len(rest) else "end"
        want = expected.input_ids[p] if p < len(expected.input_ids) else "end"
        return DataError(
            f"batch row {b} from position {at} does not hold the tokens gradscope derived for data row "
            f"{expected.index}: they first differ at token {p} ({got} in the batch, {want} from gradscope's "
            "tokenization), so its roles are unknown",
            hint="tokenize with the model's tokenizer and chat template, or pass --collate-input tokens",
        )


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
        output_dir=output_dir, report_to=[], save_strategy="no", logging_strategy="no", use_cpu=device == "cpu",
        train_sampling_strategy="sequential", shuffle_dataset=False, bf16=False, fp16=False,
        dataloader_num_workers=0, dataset_num_proc=None,
    )
    known = {f.name for f in dataclasses.fields(SFTConfig)}  # older versions lack some (rows are matched in any order)
    values.update({k: v for k, v in forced.items() if k in known})
    try:
        with warnings.catch_warnings():  # SFTConfig's own default gradient_checkpointing=True warns in transformers 5
            warnings.simplefilter("ignore", FutureWarning)
            return SFTConfig(**values)
    except (TypeError, ValueError) as err:
        raise DataError(f"SFTConfig rejects these options: {err}", path=options.trl_config, hint="use SFTConfig's field names and values") from err


def _config_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read the TRL config: {err}", path=path, hint="give a JSON object of SFTConfig options") from err
    if not isinstance(values, dict):
        raise DataError("the TRL config must be a JSON object of SFTConfig options", path=path)
    return values


def require_trl() -> None:
    """Raise a clear InputError when TRL (or datasets) is not installed."""
    try:
        import datasets  # noqa: F401
        import trl  # noqa: F401
    except ImportError as err:
        raise DataError(f"--pipeline trl needs TRL and datasets ({err})", hint="pip install gradscope[trl]") from err


def trl_batches(
    model: nn.Module, tokenizer: Any, raw: Sequence[Mapping[str, Any]], spec: RoleSpec, options: DataOptions,
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
    with tempfile.TemporaryDirectory() as out, _restored(model):
        config = trl_config(options, batch_size, device, out)
        trainer = _sft_trainer(model, copy.deepcopy(tokenizer), config, dataset)
        batches = [dict(b) for b in trainer.get_train_dataloader()]
    if trainer.chat_template is not None:  # TRL swapped in its training template (assistant_only_loss)
        spec = copy.copy(spec)
        spec.chat_template = trainer.chat_template
        rows = role_rows(dataset.to_list(), tokenizer, spec)
    return _trl_prepared(batches, rows, config, trainer)


def _dataset(raw: Sequence[Mapping[str, Any]]) -> Any:
    from datasets import Dataset

    try:
        return Dataset.from_list([dict(r) for r in raw])
    except (ValueError, TypeError) as err:  # pyarrow cannot give the rows one schema
        raise DataError(f"the rows do not make one datasets.Dataset, as TRL needs: {_first_line(err)}",
                        hint="give every row the same fields with the same types") from err


def _trl_prepared(batches: list[dict], rows: list[RoleRow], config: Any, trainer: Any) -> Prepared:
    wrapped = config.packing and config.packing_strategy != "bfd"
    pad_id = trainer.processing_class.pad_token_id
    used: set[int] = set()
    out = []
    for batch in batches:
        batch, matched = attach_roles(batch, rows, pad_id, strict=not wrapped, count_cut=not wrapped)
        out.append({**batch, "use_cache": False})  # SFTTrainer.compute_loss passes it with every batch
        used |= matched
    notes = []
    dropped = [r.index for r in rows if r.index not in used]
    if dropped:
        notes.append(
            f"TRL's data preparation left out row(s) {', '.join(map(str, dropped))}: it drops rows that truncation to "
            f"max_length={config.max_length} leaves without a trained token, so they train nothing"
        )
    if wrapped:
        notes.append("packing_strategy='wrapped' splits rows across sequences: pieces gradscope cannot match to a row have no role")
    data = {"pipeline": "trl", "trl": {k: _jsonable(getattr(config, k)) for k in (*TRL_FLAGS, "packing_strategy")}}
    data["trl"]["completion_only_loss"] = trainer.completion_only_loss
    return Prepared(out, data, notes)


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str, type(None))) else str(value)


def _sft_trainer(model: nn.Module, tokenizer: Any, config: Any, dataset: Any) -> Any:
    from trl import SFTTrainer
    from trl.chat_template_utils import has_generation_markers

    from jinja2 import TemplateError

    template = getattr(tokenizer, "chat_template", None)
    try:
        return SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    except (ValueError, RuntimeError, TypeError, KeyError, TemplateError) as err:  # TRL rejecting the setup or data
        if config.assistant_only_loss and not (template and has_generation_markers(template)):
            raise DataError(
                "assistant_only_loss=True needs a chat template with {% generation %} markers, and this tokenizer's "
                "template has none (nor is it one TRL knows how to patch): the assistant mask would be all zeros and "
                f"every sample would train nothing (no_loss). TRL says: {_first_line(err)}",
                hint="wrap each assistant turn's content and its closing token in {% generation %}...{% endgeneration %}, "
                "or use completion_only_loss with prompt/completion rows",
            ) from err
        raise DataError(f"TRL's SFTTrainer rejects this setup: {_first_line(err)}", hint="fix the TRL options or the data") from err


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


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
            model.forward = forward
        else:
            model.__dict__.pop("forward", None)
        for c, k, v in saved:
            setattr(c, k, v)
        if next(model.parameters()).device != device:
            model.to(device)
