"""Load: turn paths into a model, a tokenizer, batches and a loss function.

Everything is local and offline. Nothing is unpickled (weights only from safetensors) and no code from a model
directory runs unless the user passes ``trust_remote_code``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradscope.batch import collate
from gradscope.errors import DataError, LossSpecError, ModelLoadError
from gradscope.run import LossFn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_JSONL_KEYS = ("input_ids", "labels", "attention_mask", "position_ids", "completion_mask", "assistant_masks")


def load_model(
    path: str | Path,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    trust_remote_code: bool = False,
    device_map: str | None = None,
) -> nn.Module:
    """Load a causal LM from a local Hugging Face directory (config.json + *.safetensors).

    Args:
        path: The model directory.
        device: torch device to move the model to (``cpu``, ``cuda``, ``cuda:1``, ``mps``).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        trust_remote_code: Allow code from the directory to run.
        device_map: Spread the layers over the available devices through accelerate (``auto``, ``balanced``,
            ``sequential``) for models larger than one device; ``device`` is then not used.

    Raises:
        ModelLoadError: the directory is missing, is not a model, has no safetensors weights, needs remote code
            that was not allowed, transformers cannot build a causal LM from it, or the device is not available.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    _require_model_dir(path)
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(DTYPES)}")
    target = None if device_map else _device(device)
    placement = {"device_map": device_map} if device_map else {}
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path,
            config=config,
            dtype=DTYPES[dtype],
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            **placement,
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError) as err:
        raise ModelLoadError(_first_line(err), path=path, hint=_model_hint(err, trust_remote_code)) from err
    return model if target is None else _move(model, target)


def _device(name: str) -> torch.device:
    """The torch device named, checked to exist here (torch asserts or raises deep inside .to() otherwise)."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ModelLoadError(f"unknown device {name!r}", hint="use cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise ModelLoadError(f"device {name!r} is not available: this machine has {count} CUDA device(s)",
                                 hint="use --device cpu, or cuda:N with N below the device count")
    return device


def _move(model: nn.Module, device: torch.device) -> nn.Module:
    try:
        return model.to(device)
    except (RuntimeError, AssertionError) as err:  # torch asserts when built without the backend
        raise ModelLoadError(f"cannot move the model to {device}: {_first_line(err)}") from err


def _require_model_dir(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError("no such model directory", path=path, hint="give a local Hugging Face model directory")
    if not path.is_dir():
        raise ModelLoadError("not a directory", path=path, hint="give the model's directory, not a file in it")
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            "not a model directory: no config.json",
            path=path,
            hint="give a directory saved with save_pretrained (config.json + *.safetensors)",
        )
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(
            "no *.safetensors weights",
            path=path,
            hint="gradscope loads safetensors only (nothing pickled); convert with model.save_pretrained(dir)",
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _model_hint(err: BaseException, trust_remote_code: bool) -> str:
    if "trust_remote_code" in str(err) and not trust_remote_code:
        return "this model needs its own code: pass --trust-remote-code if you trust the directory"
    return "check that config.json and the weights belong together and describe a *ForCausalLM model"


def load_tokenizer(path: str | Path) -> Any | None:
    """The directory's tokenizer, or None when it has no tokenizer files."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"cannot load the tokenizer: {_first_line(err)}", path=path) from err


def load_batches(
    path: str | Path,
    *,
    pad_token_id: int | None,
    samples: int | None = None,
    batch_size: int = 1,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches from a ``.safetensors`` batch file (run as is) or a ``.jsonl`` of pre-tokenized rows.

    Args:
        path: The data file.
        pad_token_id: Pads JSONL rows (the tokenizer's pad id; 0 when there is none).
        samples: Keep only the first N rows.
        batch_size: JSONL rows per batch.

    Raises:
        DataError: missing, unreadable, corrupt or inconsistent data, naming the file, line and key.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such data file", path=path, hint="give a .safetensors batch or a .jsonl of rows")
    if path.suffix == ".safetensors":
        batch = read_safetensors(path)
        yield {k: v[:samples] for k, v in batch.items()} if samples else batch
    elif path.suffix == ".jsonl":
        rows = read_jsonl(path, samples)
        for start in range(0, len(rows), batch_size):
            yield collate(rows[start : start + batch_size], pad_token_id if pad_token_id is not None else 0)
    else:
        raise DataError(f"unknown data format {path.suffix!r}", path=path, hint="use .safetensors or .jsonl")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A batch file's tensors, loaded without unpickling anything."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        batch = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise DataError(f"cannot read safetensors: {_first_line(err)}", path=path, hint="re-save it with safetensors.torch.save_file") from err
    if not batch:
        raise DataError("the batch file holds no tensors", path=path, hint="save at least 'input_ids'")
    return batch


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, list[int]]]:
    """Pre-tokenized rows, one JSON object per line, each with ``input_ids`` and optional per-token lists."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if line.strip():
                rows.append(_parse_row(line, path, number))
    if not rows:
        raise DataError("no rows", path=path, hint="write one JSON object with 'input_ids' per line")
    _require_same_keys(rows, path)
    return rows


def _parse_row(line: str, path: Path, number: int) -> dict[str, list[int]]:
    where = {"path": path, "row": f"line {number}"}
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON ({err.msg} at column {err.colno})", **where, hint="each line must be one JSON object") from err
    if not isinstance(obj, dict) or "input_ids" not in obj:
        raise DataError("the row has no 'input_ids'", **where, hint="each row needs a list of token ids under 'input_ids'")
    row = {k: obj[k] for k in _JSONL_KEYS if k in obj}
    for key, values in row.items():
        if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise DataError(f"'{key}' must be a list of integers", **where)
        if len(values) != len(row["input_ids"]):
            raise DataError(
                f"'{key}' has {len(values)} entries but 'input_ids' has {len(row['input_ids'])}",
                **where,
                hint=f"give '{key}' one entry per token",
            )
    if not row["input_ids"]:
        raise DataError("'input_ids' is empty", **where)
    return row


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


def load_loss_fn(spec: str) -> LossFn:
    """Import ``FILE.py:FN`` or ``module:FN``; the function takes (logits, labels) and returns a scalar tensor.

    Importing runs the user's code: that is what the user asked for by naming it.
    """
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise LossSpecError(f"--loss {spec!r} is not FILE.py:FN or module:FN", hint="e.g. --loss my_losses.py:token_mean")
    module = _import_file(Path(target)) if target.endswith(".py") else _import_module(target)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise LossSpecError(f"no function {name!r} in {target}", hint="name a function fn(logits, labels) -> scalar")
    return fn


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise LossSpecError("no such file", path=path, hint="give the path of a .py file defining the loss")
    spec = importlib.util.spec_from_file_location(f"gradscope_user_loss_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's file: any failure is bad input, not a gradscope bug
        raise LossSpecError(f"importing it failed: {type(err).__name__}: {err}", path=path) from err
    return module


def _import_module(name: str) -> Any:
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise LossSpecError(f"cannot import module {name!r}: {err}", hint="check the module path, or use FILE.py:FN") from err
