"""Load: turn paths into a model, a tokenizer, batches and a loss function.

Everything is local and offline. Nothing is unpickled (weights only from safetensors) and no code from a model
directory runs unless the user passes ``trust_remote_code``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradscope.batch import collate, select_rows
from gradscope.data import is_raw_file, is_tokenized, jsonl_lines, read_rows
from gradscope.errors import DataError, InputError, LossSpecError, ModelLoadError
from gradscope.pipelines import DataOptions, Prepared, collate_batches, reference_batches, role_rows, trl_batches
from gradscope.roles import RoleRow, RoleSpec, row_kind, truncate
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


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_adapter_dir(path: str | Path) -> bool:
    """True for a PEFT adapter directory (it holds ``adapter_config.json``)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def load_model_and_tokenizer(
    path: str | Path,
    *,
    base: str | Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    trust_remote_code: bool = False,
    device_map: str | None = None,
) -> tuple[nn.Module, Any | None]:
    """A model directory, or a PEFT adapter directory loaded on its base model, and the tokenizer that goes with it.

    Args:
        path: A model directory (config.json + *.safetensors) or an adapter directory (adapter_config.json +
            adapter_model.safetensors).
        base: The base model directory for an adapter; by default ``base_model_name_or_path`` of its
            adapter_config.json, relative to the adapter directory or else to the working directory.
        device: torch device.
        dtype: Model dtype name.
        trust_remote_code: Allow code from the model directory to run.
        device_map: Spread the model over devices through accelerate (replaces ``device``).

    Returns:
        The model (a ``peft.PeftModel`` for an adapter, its adapter parameters trainable) and the tokenizer of the
        adapter directory, else of the base, else None.
    """
    path = Path(path)
    if not is_adapter_dir(path):
        model = load_model(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code, device_map=device_map)
        return model, load_tokenizer(path)
    base_dir = resolve_base(path, base)
    model = load_model(base_dir, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    return load_adapter(path, model).to(device), load_tokenizer(path) or load_tokenizer(base_dir)


def resolve_base(adapter: Path, base: str | Path | None = None) -> Path:
    """The local base model directory of an adapter: ``base`` if given, else what adapter_config.json names."""
    if base is not None:
        return Path(base)
    named = _adapter_config(adapter).get("base_model_name_or_path")
    if not isinstance(named, str) or not named:
        raise ModelLoadError("adapter_config.json names no base_model_name_or_path", path=adapter, hint="pass --base DIR")
    for candidate in (Path(os.path.normpath(adapter / named)), Path(named)):
        if (candidate / "config.json").is_file():
            return candidate
    raise ModelLoadError(
        f"the base model {named!r} named in adapter_config.json is not a local model directory",
        path=adapter,
        hint="pass --base DIR with the base model's local directory (gradscope never downloads)",
    )


def _adapter_config(adapter: Path) -> dict[str, Any]:
    try:
        config = json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"cannot read {ADAPTER_CONFIG}: {_first_line(err)}", path=adapter) from err
    if not isinstance(config, dict):
        raise ModelLoadError(f"{ADAPTER_CONFIG} is not a JSON object", path=adapter)
    return config


def load_adapter(path: str | Path, model: nn.Module) -> nn.Module:
    """Load a PEFT adapter directory onto ``model`` through peft, trainable (``is_trainable=True``), as training does.

    Raises:
        ModelLoadError: peft is not installed, the weights are not safetensors, or peft cannot load the adapter.
    """
    path = Path(path)
    if not (path / ADAPTER_WEIGHTS).is_file():
        raise ModelLoadError(
            f"no {ADAPTER_WEIGHTS}",
            path=path,
            hint="gradscope loads safetensors only (nothing pickled); re-save the adapter with save_pretrained",
        )
    try:
        from peft import PeftModel
    except ImportError as err:
        raise ModelLoadError(
            "loading an adapter directory needs peft", path=path, hint="pip install 'gradscope[peft]'"
        ) from err
    try:
        with warnings.catch_warnings():
            # peft calls transformers APIs that transformers marks deprecated: nothing the user can act on.
            warnings.simplefilter("ignore", FutureWarning)
            return PeftModel.from_pretrained(model, str(path), is_trainable=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError) as err:
        raise ModelLoadError(f"peft cannot load the adapter: {_first_line(err)}", path=path) from err


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
        yield first_rows(batch, samples) if samples else batch
    elif path.suffix == ".jsonl":
        rows = read_jsonl(path, samples)
        for start in range(0, len(rows), batch_size):
            yield collate(rows[start : start + batch_size], pad_token_id if pad_token_id is not None else 0)
    else:
        raise DataError(f"unknown data format {path.suffix!r}", path=path, hint="use .safetensors or .jsonl")


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
        raise DataError(f"cannot read safetensors: {_first_line(err)}", path=path, hint="re-save it with safetensors.torch.save_file") from err
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
    where = {"path": path, "row": f"line {number}"}
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON ({err.msg} at column {err.colno})", **where, hint="each line must be one JSON object") from err
    return tokenized_row(obj, where)


def tokenized_row(obj: Any, where: dict[str, Any]) -> dict[str, list[int]]:
    """A pre-tokenized row's per-token lists, checked: integer lists as long as ``input_ids``."""
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


def load_data(
    path: str | Path,
    *,
    tokenizer: Any,
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
            raise DataError("--collate and --pipeline trl build batches from raw rows; this data is already tokenized",
                            path=path, hint="give rows with prompt/completion, messages or text")
        return Prepared(_tokenized_batches(path, rows, pad, samples, batch_size), {"source": str(path), "format": "tokens"})
    if tokenizer is None:
        raise DataError("raw rows need a tokenizer, and the model directory has none", path=path,
                        hint="add the tokenizer files (tokenizer.json, tokenizer_config.json) to the model directory")
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
    toks = [tokenized_row(r, {"path": path, "row": i}) for i, r in enumerate(rows)]
    _require_same_keys(toks, Path(path))
    return [collate(toks[s : s + batch_size], pad) for s in range(0, len(toks), batch_size)]


def load_role_rows(
    path: str | Path,
    tokenizer: Any,
    *,
    samples: int | None = None,
    options: DataOptions | None = None,
    end_token_ids: frozenset[int] | None = None,
) -> list[RoleRow]:
    """Raw rows tokenized and split into roles (truncated to ``options.max_length``), without running a model."""
    options = options or DataOptions()
    if tokenizer is None:
        raise DataError("raw rows need a tokenizer, and the directory has none", hint="give a directory with tokenizer.json")
    if not is_raw_file(path):
        raise DataError("the data is a batch or pre-tokenized rows: roles are derived from raw rows", path=path,
                        hint="give rows with prompt/completion, messages or text")
    spec = role_spec(tokenizer, options, end_token_ids, source=str(path))
    mode = options.truncation_mode or "keep_start"
    return [truncate(r, options.max_length, mode) for r in role_rows(read_rows(path, samples), tokenizer, spec)]


def config_end_token_ids(path: str | Path) -> set[int]:
    """EOS ids named in a directory's config.json and generation_config.json (read as JSON: no model is built)."""
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        file = Path(path) / name
        if file.is_file():
            try:
                value = json.loads(file.read_text(encoding="utf-8")).get("eos_token_id")
            except (OSError, json.JSONDecodeError, AttributeError):
                continue
            ids.update([value] if isinstance(value, int) else [v for v in value or [] if isinstance(v, int)])
    return ids


def role_spec(tokenizer: Any, options: DataOptions, end_token_ids: frozenset[int] | None, source: str | None) -> RoleSpec:
    """How rows split into roles, from the options; end tokens default to the tokenizer's EOS and end-of-turn."""
    from gradscope.check import default_end_token_ids

    ends = end_token_ids if end_token_ids is not None else default_end_token_ids(None, tokenizer)
    return RoleSpec(ends, options.train_on, options.response_template, options.instruction_template, source=source)


def _raw_batches(
    path: str | Path, rows: list[dict[str, Any]], tokenizer: Any, model: nn.Module | None, spec: RoleSpec,
    options: DataOptions, batch_size: int, pad: int,
) -> Prepared:
    """The reference, collate or TRL pipeline on raw rows."""
    if options.pipeline == "trl":
        if options.collate:
            raise DataError("--collate and --pipeline trl both build the batch; pick one")
        if model is None:
            raise DataError("--pipeline trl needs the model (SFTTrainer is built on it)")
        return trl_batches(model, tokenizer, rows, spec, options, batch_size)
    derived = role_rows(rows, tokenizer, spec)
    cut = [truncate(r, options.max_length, options.truncation_mode or "keep_start") for r in derived]
    data = {"pipeline": "reference", "train_on": options.train_on, "max_length": options.max_length}
    if options.collate:
        fn = import_function(options.collate, "--collate", DataError, "fn(rows) -> batch dict", "my_collator.py:collate")
        # The collator gets the truncated tokens (or raw rows); its batch is matched against the whole rows, so a
        # truncation it makes is seen as one.
        batches = collate_batches(fn, rows, derived, cut, options, batch_size, pad)
        return Prepared(batches, {**data, "pipeline": "collate", "collate": options.collate, "collate_input": options.collate_input})
    return Prepared(reference_batches(cut, batch_size, pad), data)


def _formats(rows: list[dict[str, Any]]) -> str:
    kinds = sorted({row_kind(r) or "unknown" for r in rows})
    return ", ".join(kinds)


def load_loss_fn(spec: str) -> LossFn:
    """Import ``FILE.py:FN`` or ``module:FN``; the function takes (logits, labels) and returns a scalar tensor.

    Importing runs the user's code: that is what the user asked for by naming it.
    """
    return import_function(spec, "--loss", LossSpecError, "fn(logits, labels) -> scalar", "my_losses.py:token_mean")


def import_function(spec: str, flag: str, error: type[InputError], signature: str, example: str) -> Any:
    """Import the function named by ``FILE.py:FN`` or ``module:FN`` (the user's code runs: they asked for it).

    Args:
        spec: The ``FILE.py:FN`` or ``module:FN`` string.
        flag: The option that named it, for messages.
        error: The InputError subclass to raise.
        signature: What the function must look like, for messages.
        example: An example spec, for messages.
    """
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise error(f"{flag} {spec!r} is not FILE.py:FN or module:FN", hint=f"e.g. {flag} {example}")
    module = _import_file(Path(target), error) if target.endswith(".py") else _import_module(target, error)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise error(f"no function {name!r} in {target}", hint=f"name a function {signature}")
    return fn


def _import_file(path: Path, error: type[InputError]) -> Any:
    if not path.is_file():
        raise error("no such file", path=path, hint="give the path of a .py file defining the function")
    spec = importlib.util.spec_from_file_location(f"gradscope_user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's file: any failure is bad input, not a gradscope bug
        raise error(f"importing it failed: {type(err).__name__}: {err}", path=path) from err
    return module


def _import_module(name: str, error: type[InputError]) -> Any:
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise error(f"cannot import module {name!r}: {err}", hint="check the module path, or use FILE.py:FN") from err
