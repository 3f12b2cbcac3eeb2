"""A model directory checked before transformers reads it, and the weights checked after: safetensors files only
(index included), readable headers, a config whose values have the right types, and a checkpoint that covers
every parameter of the model (a missing tensor would be randomly initialised, and reported on as if trained)."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from gradscope.errors import ModelLoadError, first_line

INDEX = "model.safetensors.index.json"
_SHOWN = 5
CONFIG_BYTES = 16 << 20
"""The largest config.json or index read (a real one is a few KiB; a device file or a huge one would hang or fill
memory)."""
PARAMETERS_PER_BYTE = 4
"""A config may imply at most this many parameters per byte of its weight files (fp32 holds 1/4 per byte, 4-bit
weights 2): a config that implies more describes a model its weights cannot be, and building it first would
allocate without bound (``num_hidden_layers: 1000000000``)."""
SIZE_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "n_embd",
    "n_layer",
    "n_head",
    "n_positions",
)
"""Config values that size the model: positive integers when present."""


def require_utf8(path: Path) -> None:
    """The directory's path is valid UTF-8: the safetensors and tokenizers readers take no other (a non-UTF-8 name
    reaches Python as lone surrogates)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise ModelLoadError(
            "the path is not valid UTF-8, and the safetensors and tokenizers readers open UTF-8 paths only",
            path=path,
            hint="rename the directory",
        ) from None


def check_regular_file(file: Path, path: Path, *, max_bytes: int | None = None) -> None:
    """``file`` is a regular file (not a FIFO, device or socket, which would block or never end), and no larger
    than ``max_bytes``; checked by type before it is opened."""
    try:
        info = file.stat()
    except OSError as err:
        raise ModelLoadError(f"cannot read {file.name}: {err.strerror or err}", path=path) from None
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(
            f"{file.name} is not a regular file (a FIFO, device or socket)",
            path=path,
            hint="give a directory of ordinary files saved with save_pretrained",
        )
    if max_bytes is not None and info.st_size > max_bytes:
        raise ModelLoadError(
            f"{file.name} is {info.st_size} bytes, more than the {max_bytes} a config can be", path=path
        )


def check_weight_files(path: Path) -> None:
    """Every weight file transformers would open is a readable safetensors file of this directory.

    Raises:
        ModelLoadError: an index that is not JSON or names a file that is not a safetensors file here (a pickle,
            a path outside the directory, a missing shard); a corrupt or truncated safetensors file.
    """
    from safetensors import SafetensorError, safe_open

    require_utf8(path)
    check_regular_file(path / "config.json", path, max_bytes=CONFIG_BYTES)
    _check_raw_dtype(path)
    index = path / INDEX
    if index.exists():
        check_regular_file(index, path, max_bytes=CONFIG_BYTES)
        for name in _index_files(index):
            if not name.endswith(".safetensors") or Path(name).name != name or not (path / name).is_file():
                raise ModelLoadError(
                    f"{INDEX} names {name!r}, not a safetensors file of this directory",
                    path=path,
                    hint="gradscope reads safetensors only (nothing pickled); re-save with save_pretrained",
                )
    for file in sorted(path.glob("*.safetensors")):
        check_regular_file(file, path)
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError, ValueError) as err:
            raise ModelLoadError(
                f"cannot read {file.name}: {first_line(err)}",
                path=path,
                hint="the file is corrupt or truncated; re-save the model with save_pretrained",
            ) from err


def _index_files(index: Path) -> set[str]:
    try:
        value = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ModelLoadError(f"cannot read {INDEX}: {first_line(err)}", path=index.parent) from None
    weight_map = value.get("weight_map") if isinstance(value, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelLoadError(f"{INDEX} has no 'weight_map' of tensor names to files", path=index.parent)
    return set(weight_map.values())


def check_config(config: Any, path: Path) -> None:
    """Config values gradscope and the model rely on have usable types (transformers accepts ``vocab_size: 0``)."""
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and (not _is_int(vocab) or vocab <= 0):
        raise ModelLoadError(f"config.json has vocab_size {vocab!r}; it must be a positive integer", path=path)
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        value = getattr(config, key, None)
        values = value if isinstance(value, list) else [value]
        if not all(v is None or (_is_int(v) and v >= 0) for v in values):
            raise ModelLoadError(
                f"config.json has {key} {value!r}; it must be a token id, a list of them, or null", path=path
            )
    for key in SIZE_KEYS:
        value = getattr(config, key, None)
        if value is not None and (not _is_int(value) or value <= 0):
            raise ModelLoadError(f"config.json has {key} {value!r}; it must be a positive integer", path=path)
    _check_dtype(getattr(config, "dtype", None), path)


def _check_raw_dtype(path: Path) -> None:
    """config.json's dtype names a torch dtype (transformers looks it up on torch while parsing the config, and an
    unknown name is an AttributeError there)."""
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return  # transformers reports an unreadable config.json
    for key in ("dtype", "torch_dtype"):
        if isinstance(raw, dict) and key in raw:
            _check_dtype(raw[key], path)


def _check_dtype(value: object, path: Path) -> None:
    import torch

    if value is None or value == "auto" or isinstance(value, torch.dtype):
        return
    if not (isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype)):
        raise ModelLoadError(
            f"config.json has dtype {value!r}; it must name a torch dtype (float32, bfloat16, ...)", path=path
        )


def check_size(config: Any, path: Path) -> None:
    """Refuse a config that implies a model far larger than its weight files, before anything is allocated."""
    estimate = estimated_parameters(config)
    weights = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    if estimate is not None and estimate > PARAMETERS_PER_BYTE * weights + 1_000_000:
        raise ModelLoadError(
            f"config.json implies about {estimate:.3g} parameters, but the weight files hold {weights} bytes",
            path=path,
            hint="give the config.json that belongs to these weights",
        )


def estimated_parameters(config: Any) -> int | None:
    """A lower-order estimate of a transformer's parameter count from its config (embeddings, attention and MLP
    per layer); None when the config does not say its width, depth or vocabulary."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    width = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    depth = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    vocab = getattr(text, "vocab_size", None)
    if not (isinstance(width, int) and isinstance(depth, int) and isinstance(vocab, int)):
        return None
    inner = getattr(text, "intermediate_size", None)
    inner = inner if isinstance(inner, int) else 4 * width
    return depth * width * (2 * width + 2 * inner) + vocab * width


def check_coverage(info: dict[str, list], path: Path) -> None:
    """The checkpoint holds every tensor the model expects, and no other (transformers would initialise the
    missing ones at random and only warn).

    Args:
        info: transformers' loading info (``output_loading_info=True``).
    """
    missing, unexpected = list(info.get("missing_keys") or ()), list(info.get("unexpected_keys") or ())
    mismatched = [str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys") or ()]
    for what, names in (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", mismatched)):
        if names:
            shown = ", ".join(sorted(names)[:_SHOWN]) + (
                f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
            )
            raise ModelLoadError(
                f"the weights do not match the model: {len(names)} tensor(s) {what}: {shown}",
                path=path,
                hint="give the weights that belong to this config (a missing tensor would be "
                "random, and its verdict meaningless)",
            )


def adapter_tensor_names(path: Path) -> set[str]:
    """The tensor names of an adapter's adapter_model.safetensors, its header checked."""
    from safetensors import SafetensorError, safe_open

    file = path / "adapter_model.safetensors"
    try:
        with safe_open(str(file), framework="pt") as f:
            return set(f.keys())
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot read adapter_model.safetensors: {first_line(err)}",
            path=path,
            hint="the adapter file is corrupt or truncated; re-save it with save_pretrained",
        ) from err


def check_adapter_coverage(model: Any, names: set[str], path: Path) -> None:
    """Each trainable adapter parameter has its tensor in the adapter file (peft only warns and keeps the
    initial values: LoRA's B = 0, an adapter that does nothing)."""
    expected = {n.replace(".default.", ".") for n, p in model.named_parameters() if p.requires_grad}
    check_coverage({"missing_keys": sorted(expected - names), "unexpected_keys": sorted(names - expected)}, path)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
