"""The user's own code: ``--loss`` and ``--collate`` functions, imported from a file or a module."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gradscope.errors import GradscopeError, InputError, LossSpecError


def load_loss_fn(spec: str) -> LossFn:
    """Import ``FILE.py:FN`` or ``module:FN``; the function takes (logits, labels) and returns a scalar tensor.

    Importing runs the user's code: that is what the user asked for by naming it.
    """
    fn = import_function(spec, "`loss`", LossSpecError, "fn(logits, labels) -> scalar", "my_losses.py:token_mean")
    return _checked_loss(_sandboxed(fn, spec.rpartition(":")[2], LossSpecError))


def _checked_loss(fn: Callable) -> LossFn:
    """The user's loss, its result checked: a real floating-point scalar tensor with a path back to the logits.
    Anything else is bad input (a detached loss is not a finding: gradscope could read nothing from it)."""
    name = getattr(fn, "__qualname__", repr(fn))

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        value = fn(logits, labels)
        problem = _not_a_loss(value, logits.requires_grad)
        if problem:
            raise LossSpecError(
                f"the loss function {name} returned {problem}",
                hint="return a real scalar tensor computed from the logits, e.g. cross_entropy(...)",
            )
        return value

    loss.__qualname__ = loss.__name__ = name
    return loss


def _not_a_loss(value: object, needs_grad: bool) -> str | None:
    if not isinstance(value, torch.Tensor):
        return f"a {type(value).__name__}, not a tensor"
    if value.dtype.is_complex or not value.dtype.is_floating_point:
        return f"a tensor of dtype {str(value.dtype).removeprefix('torch.')}, not a real floating-point loss"
    if value.numel() != 1:
        return f"a tensor of shape {tuple(value.shape)}, not a scalar"
    if needs_grad and not value.requires_grad:
        return "a tensor with no gradient path to the logits (detached?)"
    return None


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


def _sandboxed(fn: Callable, name: str, error: type[InputError]) -> Callable:
    """The user's function, anything it raises (SystemExit included; not Ctrl-C) turned into ``error`` naming it."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GradscopeError:
            raise
        except (Exception, SystemExit) as err:  # the user's code: any failure is bad input, not a gradscope bug
            raise error(f"{name}() raised {type(err).__name__}: {err}") from None

    call.__qualname__ = getattr(fn, "__qualname__", name)
    call.__name__ = getattr(fn, "__name__", name)
    call.__wrapped__ = fn  # type: ignore[attr-defined]  # a function object takes any attribute; mypy knows none
    return call


def _import_file(path: Path, error: type[InputError]) -> Any:
    if not path.is_file():
        raise error("no such file", path=path, hint="give the path of a .py file defining the function")
    spec = importlib.util.spec_from_file_location(f"gradscope_user_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise error("not a Python source file", path=path, hint="give the path of a .py file defining the function")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:  # the user's file: any failure is bad input, not a gradscope bug
        raise error(f"importing it failed: {type(err).__name__}: {err}", path=path) from err
    return module


def _import_module(name: str, error: type[InputError]) -> Any:
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise error(f"cannot import module {name!r}: {err}", hint="check the module path, or use FILE.py:FN") from err
    except (Exception, SystemExit) as err:  # importing ran the user's code, and it failed
        raise error(f"importing module {name!r} failed: {type(err).__name__}: {err}") from None


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def raised_in(err: BaseException) -> str:
    """`` in Fn.backward (file.py:12)``: the innermost frame of the traceback outside torch, transformers, peft and
    gradscope (the user's own code), or ``""``."""
    libraries = [str(Path(__file__).parents[1])] + [
        str(Path(file).parent)
        for name in ("torch", "transformers", "peft")
        if (file := getattr(sys.modules.get(name), "__file__", None))
    ]
    where, tb = "", err.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if not code.co_filename.startswith(tuple(libraries)):
            where = f" in {getattr(code, 'co_qualname', code.co_name)} ({Path(code.co_filename).name}:{tb.tb_lineno})"
        tb = tb.tb_next
    return where
