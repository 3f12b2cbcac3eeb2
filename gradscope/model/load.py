"""Load a model and its tokenizer from a local directory, a PEFT adapter on its base included.

Everything is local and offline. Nothing is unpickled (weights only from safetensors) and no code from a model
directory runs unless the user passes ``trust_remote_code``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradscope.errors import ModelLoadError, first_line
from gradscope.model.checkpoint import (
    adapter_tensor_names,
    check_adapter_coverage,
    check_config,
    check_coverage,
    check_size,
    check_weight_files,
    require_utf8,
)
from gradscope.modes import Dtype
from gradscope.tokenizer import Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_model(
    path: str | Path,
    *,
    device: str = "cpu",
    dtype: Dtype = "float32",
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
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    _require_model_dir(path)
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(DTYPES)}")
    target = None if device_map else _device(device)
    placement = {"device_map": device_map} if device_map else {}
    check_weight_files(path)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        check_config(config, path)
        check_size(config, path)
        loaded: Any = AutoModelForCausalLM.from_pretrained(  # output_loading_info: (model, info)
            path,
            config=config,
            dtype=DTYPES[dtype],
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            **placement,
        )
        model, info = loaded
    except StrictDataclassError as err:  # config.json values of the wrong type: the first two lines name them
        lines = [line.strip() for line in str(err).splitlines() if line.strip()][:2]
        raise ModelLoadError(f"config.json: {' '.join(lines).split('. Errors:')[0]}", path=path) from None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError) as err:
        raise ModelLoadError(first_line(err), path=path, hint=_model_hint(err, trust_remote_code)) from err
    check_coverage(info, path)
    return model if target is None else _move(model, target)


def _device(name: str) -> torch.device:
    """The torch device named, checked to exist here (torch asserts or raises deep inside .to() otherwise)."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ModelLoadError(f"unknown device {name!r}", hint="use cpu, cuda, cuda:N or mps") from err
    if device.type == "meta":  # shapes only: no value to run or to report on
        raise ModelLoadError("the meta device holds no values to run the model on", hint="use cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise ModelLoadError(
                f"device {name!r} is not available: this machine has {count} CUDA device(s)",
                hint="set `device` to cpu, or cuda:N with N below the device count",
            )
    return device


def _move(model: nn.Module, device: torch.device) -> nn.Module:
    try:
        return model.to(device)
    except (RuntimeError, AssertionError) as err:  # torch asserts when built without the backend
        raise ModelLoadError(f"cannot move the model to {device}: {first_line(err)}") from err


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


def _model_hint(err: BaseException, trust_remote_code: bool) -> str:
    if "trust_remote_code" in str(err) and not trust_remote_code:
        return "this model needs its own code: pass `trust_remote_code` if you trust the directory"
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
    dtype: Dtype = "float32",
    trust_remote_code: bool = False,
    device_map: str | None = None,
) -> tuple[nn.Module, Tokenizer | None]:
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
        return model, load_tokenizer(path, trust_remote_code=trust_remote_code)
    base_dir = resolve_base(path, base)
    model = load_model(base_dir, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    return load_adapter(path, model).to(device), tokenizer or load_tokenizer(
        base_dir, trust_remote_code=trust_remote_code
    )


def resolve_base(adapter: Path, base: str | Path | None = None) -> Path:
    """The local base model directory of an adapter: ``base`` if given, else what adapter_config.json names."""
    if base is not None:
        return Path(base)
    named = _adapter_config(adapter).get("base_model_name_or_path")
    if not isinstance(named, str) or not named:
        raise ModelLoadError(
            "adapter_config.json names no base_model_name_or_path", path=adapter, hint="pass `base` DIR"
        )
    for candidate in (Path(os.path.normpath(adapter / named)), Path(named)):
        if (candidate / "config.json").is_file():
            return candidate
    raise ModelLoadError(
        f"the base model {named!r} named in adapter_config.json is not a local model directory",
        path=adapter,
        hint="pass `base` DIR with the base model's local directory (gradscope never downloads)",
    )


def _adapter_config(adapter: Path) -> dict[str, Any]:
    try:
        config = json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"cannot read {ADAPTER_CONFIG}: {first_line(err)}", path=adapter) from err
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
            "loading an adapter directory needs peft",
            path=path,
            hint="install the peft extra: pip install -e '.[peft]' in a clone of gradscope",
        ) from err
    names = adapter_tensor_names(path)
    try:
        with warnings.catch_warnings():
            # peft calls transformers APIs that transformers marks deprecated: nothing the user can act on.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)  # its missing-keys warning: checked below, as an error
            adapted = PeftModel.from_pretrained(model, str(path), is_trainable=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError) as err:
        raise ModelLoadError(f"peft cannot load the adapter: {first_line(err)}", path=path) from err
    check_adapter_coverage(adapted, names, path)
    return adapted


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> Tokenizer | None:
    """The directory's tokenizer, or None when it has no tokenizer files.

    ``trust_remote_code`` is always passed explicitly: left as None, transformers asks on standard input whether to
    run a tokenizer's own code (``auto_map``), and a ``y`` there runs it.
    """
    from transformers import AutoTokenizer

    path = Path(path)
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        return None
    require_utf8(path)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as err:  # tokenizers raises a bare Exception for a corrupt tokenizer.json: bad input
        raise ModelLoadError(
            f"cannot load the tokenizer: {first_line(err)}", path=path, hint=_model_hint(err, trust_remote_code)
        ) from None
