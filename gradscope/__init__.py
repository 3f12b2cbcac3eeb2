"""gradscope: read from the loss gradient which tokens a causal-LM fine-tune really trains, and what reaches the
weights.

    >>> report = gradscope.check(model, batch, tokenizer=tokenizer)
    >>> report.ok, [f.check for f in report.findings]
    >>> gradscope.grads(model, batch, lr=2e-4).grads.global_norm
    >>> gradscope.check_files(gradscope.Inputs("models/my-sft", "batch.safetensors"))  # what `gradscope check` does
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gradscope.render.html  # noqa: F401,E402  (no torch: installs the HTML view behind Report.to_html and _repr_html_)
from gradscope.errors import (
    DataError,
    GradscopeError,
    InputError,
    LossSpecError,
    MaskingError,
    ModelCallError,
    ModelLoadError,
    OutputError,
)

if TYPE_CHECKING:
    from gradscope.checks.grads import GradThresholds
    from gradscope.data.pipelines import DataOptions
    from gradscope.data.rows import RoleRow
    from gradscope.report.check import Report, SampleReport, TokenReport
    from gradscope.report.finding import Finding
    from gradscope.report.roles import RolesReport
    from gradscope.report.scan import ScanReport
    from gradscope.report.weights import (
        DirectionCheck,
        GradReport,
        ModuleGrad,
        OverfitReport,
        ParamGrad,
        VerifyReport,
    )
    from gradscope.scan.dataset import scan
    from gradscope.verbs.check import check, check_batches
    from gradscope.verbs.files import Inputs, check_files, grads_files, inspect_files, roles_files, verify_files
    from gradscope.verbs.grads import grads
    from gradscope.verbs.options import CheckOptions
    from gradscope.verbs.overfit import overfit
    from gradscope.verbs.verify import verify

_LAZY = {
    "GradThresholds": "gradscope.checks.grads",
    "DataOptions": "gradscope.data.pipelines",
    "Report": "gradscope.report.check",
    "SampleReport": "gradscope.report.check",
    "TokenReport": "gradscope.report.check",
    "Finding": "gradscope.report.finding",
    "RoleRow": "gradscope.data.rows",
    "RolesReport": "gradscope.report.roles",
    "ScanReport": "gradscope.report.scan",
    **dict.fromkeys(
        ("DirectionCheck", "GradReport", "ModuleGrad", "OverfitReport", "ParamGrad", "VerifyReport"),
        "gradscope.report.weights",
    ),
    "check": "gradscope.verbs.check",
    "check_batches": "gradscope.verbs.check",
    "CheckOptions": "gradscope.verbs.options",
    **dict.fromkeys(
        ("Inputs", "check_files", "grads_files", "inspect_files", "roles_files", "verify_files"),
        "gradscope.verbs.files",
    ),
    "grads": "gradscope.verbs.grads",
    "overfit": "gradscope.verbs.overfit",
    "verify": "gradscope.verbs.verify",
}
"""Public names and the module that defines each: imported on first use, so that ``gradscope --help`` and the
command line's argument errors never load torch."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "scan"})


class _Package(types.ModuleType):
    """``gradscope.scan`` is the scan function; the import system binds the subpackage of that name to its parent
    when it first loads it, and this keeps the function in its place."""

    @property
    def scan(self) -> Callable[..., Any]:
        from gradscope.scan.dataset import scan

        return scan

    @scan.setter
    def scan(self, value: object) -> None:
        pass  # the subpackage gradscope.scan stays reachable through sys.modules and import statements


sys.modules[__name__].__class__ = _Package


__version__ = "0.1.0"

__all__ = [
    "CheckOptions",
    "DataError",
    "DataOptions",
    "DirectionCheck",
    "Finding",
    "GradReport",
    "GradThresholds",
    "GradscopeError",
    "InputError",
    "LossSpecError",
    "MaskingError",
    "ModelCallError",
    "ModelLoadError",
    "OutputError",
    "Inputs",
    "ModuleGrad",
    "OverfitReport",
    "ParamGrad",
    "Report",
    "RoleRow",
    "RolesReport",
    "SampleReport",
    "ScanReport",
    "TokenReport",
    "VerifyReport",
    "check",
    "check_batches",
    "check_files",
    "grads_files",
    "inspect_files",
    "roles_files",
    "verify_files",
    "grads",
    "overfit",
    "verify",
    "scan",
]
