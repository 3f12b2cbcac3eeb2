"""Load data: batch files (.safetensors, JSON lines) and raw rows into batches, with roles where they are known."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradscope.data.batch import collate, select_rows
from gradscope.data.files import is_raw_file, is_tokenized, jsonl_lines, read_rows
from gradscope.data.jsonio import loads
from gradscope.data.pipelines import DataOptions, Prepared, collate_batches, reference_batches, role_rows, row_notes
from gradscope.data.roles import RoleSpec, row_kind
from gradscope.data.rows import RoleRow, truncate
from gradscope.data.sources import TOKENIZED_KEYS, data_format
from gradscope.data.trl import trl_batches
from gradscope.errors import DataError, first_line
from gradscope.model.usercode import import_function
from gradscope.tokenizer import Tokenizer

_INT64 = (-(2**63), 2**63 - 1)


def load_batches(
    path: str | Path,
    *,
    pad_token_id: int | None,
    samples: int | None = None,
    batch_size: int = 1,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches from a ``.safetensors`` batch file (run as is) or pre-tokenized rows in any format gradscope reads.

    Args:
        path: The data file.
        pad_token_id: Pads JSONL rows (the tokenizer's pad id; 0 when there is none).
        samples: Keep only the first N rows.
        batch_size: Rows per batch.

    Raises:
        DataError: missing, unreadable, corrupt or inconsistent data, naming the file, line and key.
    """
    path = Path(path)
    fmt = data_format(path)
    if fmt == "safetensors":
        batch = read_safetensors(path)
        yield first_rows(batch, samples) if samples else batch
        return
    rows = read_jsonl(path, samples) if fmt == "jsonl" else _tokenized_rows(path, read_rows(path, samples))
    for start in range(0, len(rows), batch_size):
        yield collate(rows[start : start + batch_size], pad_token_id if pad_token_id is not None else 0)


def first_rows(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """The batch's first n rows: per-row tensors are sliced, the others (e.g. cu_seq_lens, scalars) kept whole."""
    return select_rows(batch, slice(0, n))


def read_safetensors(path: Path) -> dict[str, Any]:
    """A batch file's tensors, loaded without unpickling anything.

    A 0-d tensor is a scalar argument and becomes a Python bool, int or float, the form collators and trainers
    give it (TRL's ``max_length_q``, the ``use_cache=False`` TRL's trainer adds): safetensors stores only tensors.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        batch = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise DataError(
            f"cannot read safetensors: {first_line(err)}", path=path, hint="re-save it with safetensors.torch.save_file"
        ) from err
    if not batch:
        raise DataError("the batch file holds no tensors", path=path, hint="save at least 'input_ids'")
    return {k: v.item() if v.dim() == 0 else v for k, v in batch.items()}


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, list[int]]]:
    """Pre-tokenized rows, one JSON object per line, each with ``input_ids`` and optional per-token lists."""
    rows = [_parse_row(line, path, number) for number, line in jsonl_lines(path, limit)]
    if not rows:
        raise DataError("no rows", path=path, hint="write one JSON object with 'input_ids' per line")
    _require_same_keys(rows, path)
    return rows


def _parse_row(line: str, path: Path, number: int) -> dict[str, list[int]]:
    where: dict[str, Any] = {"path": path, "row": f"line {number}"}
    return tokenized_row(loads(line, path, where["row"]), where)


def tokenized_row(obj: Any, where: dict[str, Any]) -> dict[str, list[int]]:
    """A pre-tokenized row's per-token lists, checked: integer lists as long as ``input_ids``."""
    if not isinstance(obj, dict) or "input_ids" not in obj:
        raise DataError(
            "the row has no 'input_ids'", **where, hint="each row needs a list of token ids under 'input_ids'"
        )
    row = {k: obj[k] for k in TOKENIZED_KEYS if k in obj}
    _unknown_token_keys(obj, where)
    for key, values in row.items():
        if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise DataError(f"'{key}' must be a list of integers", **where)
        big = next((i for i, v in enumerate(values) if not _INT64[0] <= v <= _INT64[1]), None)
        if big is not None:
            raise DataError(
                f"'{key}' holds {values[big]}, past int64",
                **{**where, "position": big},
                hint="token ids are small non-negative integers",
            )
        if len(values) != len(row["input_ids"]):
            raise DataError(
                f"'{key}' has {len(values)} entries but 'input_ids' has {len(row['input_ids'])}",
                **where,
                hint=f"give '{key}' one entry per token",
            )
    if not row["input_ids"]:
        raise DataError("'input_ids' is empty", **where)
    return row


def _unknown_token_keys(obj: dict[str, Any], where: dict[str, Any]) -> None:
    """A list with one entry per token under a key gradscope does not know is a misspelling (``attention_masks``),
    not metadata: it would be dropped silently."""
    ids = obj["input_ids"]
    for key, value in obj.items():
        if key not in TOKENIZED_KEYS and isinstance(value, list) and isinstance(ids, list) and len(value) == len(ids):
            close = difflib.get_close_matches(key, TOKENIZED_KEYS, n=1)
            raise DataError(
                f"unknown per-token key '{key}'",
                **where,
                hint=f"did you mean '{close[0]}'?" if close else f"use one of {', '.join(TOKENIZED_KEYS)}",
            )


def _require_same_keys(rows: list[dict[str, list[int]]], path: Path) -> None:
    keys = set(rows[0])
    for i, row in enumerate(rows):
        if set(row) != keys:
            raise DataError(
                f"keys {sorted(row)} differ from the first row's {sorted(keys)}",
                path=path,
                row=f"row {i}",
                hint="give every row the same keys",
            )


def load_data(
    path: str | Path,
    *,
    tokenizer: Tokenizer | None,
    model: nn.Module | None = None,
    samples: int | None = None,
    batch_size: int = 1,
    options: DataOptions | None = None,
    pad_token_id: int | None = None,
    end_token_ids: frozenset[int] | None = None,
) -> Prepared:
    """Batches from any data gradscope reads, with what the report should say about them.

    A ``.safetensors`` batch or pre-tokenized rows load as ``load_batches`` does. Raw rows (prompt/completion,
    messages, text) are tokenized with the tokenizer, given roles, and labelled by gradscope's reference masking, the
    user's collator (``options.collate``) or TRL (``options.pipeline == "trl"``, which needs the model).

    Raises:
        InputError: unreadable data, rows gradscope cannot split into roles, a collator or TRL setup that fails.
    """
    options = options or DataOptions()
    pad = pad_token_id if pad_token_id is not None else 0
    rows = read_rows(path, samples) if is_raw_file(path) else None
    if rows is None or all(is_tokenized(r) for r in rows):
        if options.collate or options.pipeline == "trl":
            raise DataError(
                "`collate` and `pipeline` trl build batches from raw rows; this data is already tokenized",
                path=path,
                hint="give rows with prompt/completion, messages or text",
            )
        return Prepared(
            _tokenized_batches(path, rows, pad, samples, batch_size), {"source": str(path), "format": "tokens"}
        )
    if tokenizer is None:
        raise DataError(
            "raw rows need a tokenizer, and the model directory has none",
            path=path,
            hint="add the tokenizer files (tokenizer.json, tokenizer_config.json) to the model directory",
        )
    spec = role_spec(tokenizer, options, end_token_ids, source=str(path))
    prepared = _raw_batches(path, rows, tokenizer, model, spec, options, batch_size, pad)
    prepared.data = {"source": str(path), "rows": len(rows), "format": _formats(rows), **prepared.data}
    return prepared


def _tokenized_batches(
    path: str | Path, rows: list[dict[str, Any]] | None, pad: int, samples: int | None, batch_size: int
) -> list[dict[str, torch.Tensor]]:
    """A .safetensors batch or .jsonl as load_batches reads them; tokenized rows from .json/.parquet/datasets too."""
    if rows is None:
        return list(load_batches(path, pad_token_id=pad, samples=samples, batch_size=batch_size))
    toks = _tokenized_rows(path, rows)
    return [collate(toks[s : s + batch_size], pad) for s in range(0, len(toks), batch_size)]


def _tokenized_rows(path: str | Path, rows: list[dict[str, Any]]) -> list[dict[str, list[int]]]:
    """Tokenized rows read from a .json, .parquet, .arrow or datasets directory, checked as JSON lines are."""
    toks = [tokenized_row(r, {"path": path, "row": i}) for i, r in enumerate(rows)]
    _require_same_keys(toks, Path(path))
    return toks


def load_role_rows(
    path: str | Path,
    tokenizer: Tokenizer | None,
    *,
    samples: int | None = None,
    options: DataOptions | None = None,
    end_token_ids: frozenset[int] | None = None,
) -> list[RoleRow]:
    """Raw rows tokenized and split into roles (truncated to ``options.max_length``), without running a model."""
    options = options or DataOptions()
    if tokenizer is None:
        raise DataError(
            "raw rows need a tokenizer, and the directory has none", hint="give a directory with tokenizer.json"
        )
    if not is_raw_file(path):
        raise DataError(
            "the data is a batch or pre-tokenized rows: roles are derived from raw rows",
            path=path,
            hint="give rows with prompt/completion, messages or text",
        )
    spec = role_spec(tokenizer, options, end_token_ids, source=str(path))
    mode = options.truncation_mode or "keep_start"
    return [truncate(r, options.max_length, mode) for r in role_rows(read_rows(path, samples), tokenizer, spec)]


def role_spec(
    tokenizer: Tokenizer, options: DataOptions, end_token_ids: frozenset[int] | None, source: str | None
) -> RoleSpec:
    """How rows split into roles, from the options; end tokens default to the tokenizer's EOS and end-of-turn."""
    from gradscope.data.tokens import default_end_token_ids

    ends = end_token_ids if end_token_ids is not None else default_end_token_ids(None, tokenizer)
    return RoleSpec(ends, options.train_on, options.response_template, options.instruction_template, source=source)


def _raw_batches(
    path: str | Path,
    rows: list[dict[str, Any]],
    tokenizer: Tokenizer,
    model: nn.Module | None,
    spec: RoleSpec,
    options: DataOptions,
    batch_size: int,
    pad: int,
) -> Prepared:
    """The reference, collate or TRL pipeline on raw rows."""
    if options.pipeline == "trl":
        if options.collate:
            raise DataError("`collate` and `pipeline` trl both build the batch; pick one")
        if model is None:
            raise DataError("`pipeline` trl needs the model (SFTTrainer is built on it)")
        return trl_batches(model, tokenizer, rows, spec, options, batch_size)
    derived = role_rows(rows, tokenizer, spec)
    cut = [truncate(r, options.max_length, options.truncation_mode or "keep_start") for r in derived]
    data = {"pipeline": "reference", "train_on": options.train_on, "max_length": options.max_length}
    if options.collate:
        fn = import_function(
            options.collate, "`collate`", DataError, "fn(rows) -> batch dict", "my_collator.py:collate"
        )
        # The collator gets the truncated tokens (or raw rows); its batch is matched against the whole rows, so a
        # truncation it makes is seen as one.
        batches = collate_batches(fn, rows, derived, cut, options, batch_size, pad)
        return Prepared(
            batches,
            {**data, "pipeline": "collate", "collate": options.collate, "collate_input": options.collate_input},
            row_notes(derived),
        )
    return Prepared(reference_batches(cut, batch_size, pad), data, row_notes(derived))


def _formats(rows: list[dict[str, Any]]) -> str:
    kinds = sorted({row_kind(r) or "unknown" for r in rows})
    return ", ".join(kinds)
