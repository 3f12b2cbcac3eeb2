"""The user's own code: ``--loss`` and ``--collate`` functions, imported from a file or a module."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gradscope.errors import InputError, LossSpecError


def load_loss_fn(spec: str) -> LossFn:
    """Import ``FILE.py:FN`` or ``module:FN``; the function takes (logits, labels) and returns a scalar tensor.

    Importing runs the user's code: that is what the user asked for by naming it.
    """
    return import_function(spec, "`loss`", LossSpecError, "fn(logits, labels) -> scalar", "my_losses.py:token_mean")


def import_function(spec: str, param: str, error: type[InputError], signature: str, example: str) -> Any:
    """Import the function named by ``FILE.py:FN`` or ``module:FN`` (the user's code runs: they asked for it).

    Args:
        spec: The ``FILE.py:FN`` or ``module:FN`` string.
        param: The parameter that named it, for messages.
        error: The InputError subclass to raise.
        signature: What the function must look like, for messages.
        example: An example spec, for messages.
    """
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise error(f"{param} {spec!r} is not FILE.py:FN or module:FN", hint=f"e.g. {param} {example}")
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

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
