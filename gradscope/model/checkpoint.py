"""A model directory checked before transformers reads it, and the weights checked after: safetensors files only
(index included), readable headers, a config whose values have the right types, and a checkpoint that covers
every parameter of the model (a missing tensor would be randomly initialised, and reported on as if trained)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gradscope.errors import ModelLoadError, first_line

INDEX = "model.safetensors.index.json"
_SHOWN = 5


def check_weight_files(path: Path) -> None:
    """Every weight file transformers would open is a readable safetensors file of this directory.

    Raises:
        ModelLoadError: an index that is not JSON or names a file that is not a safetensors file here (a pickle,
            a path outside the directory, a missing shard); a corrupt or truncated safetensors file.
    """
    from safetensors import SafetensorError, safe_open

    index = path / INDEX
    if index.is_file():
        for name in _index_files(index):
            if not name.endswith(".safetensors") or Path(name).name != name or not (path / name).is_file():
                raise ModelLoadError(f"{INDEX} names {name!r}, not a safetensors file of this directory", path=path,
                                     hint="gradscope reads safetensors only (nothing pickled); re-save with save_pretrained")
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError, ValueError) as err:
            raise ModelLoadError(f"cannot read {file.name}: {first_line(err)}", path=path,
                                 hint="the file is corrupt or truncated; re-save the model with save_pretrained") from err


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
            raise ModelLoadError(f"config.json has {key} {value!r}; it must be a token id, a list of them, or null",
                                 path=path)


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
            shown = ", ".join(sorted(names)[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
            raise ModelLoadError(
                f"the weights do not match the model: {len(names)} tensor(s) {what}: {shown}", path=path,
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
        raise ModelLoadError(f"cannot read adapter_model.safetensors: {first_line(err)}", path=path,
                             hint="the adapter file is corrupt or truncated; re-save it with save_pretrained") from err


def check_adapter_coverage(model: Any, names: set[str], path: Path) -> None:
    """Each trainable adapter parameter has its tensor in the adapter file (peft only warns and keeps the
    initial values: LoRA's B = 0, an adapter that does nothing)."""
    expected = {n.replace(".default.", ".") for n, p in model.named_parameters() if p.requires_grad}
    check_coverage({"missing_keys": sorted(expected - names), "unexpected_keys": sorted(names - expected)}, path)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


