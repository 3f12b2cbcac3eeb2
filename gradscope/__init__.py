"""gradscope: read from the loss gradient which tokens a causal-LM fine-tune really trains, and what reaches the
weights.

    >>> report = gradscope.check(model, batch, tokenizer=tokenizer)
    >>> report.ok, [f.check for f in report.findings]
    >>> gradscope.grads(model, batch, lr=2e-4).grads.global_norm
    >>> gradscope.check_files(gradscope.Inputs("models/my-sft", "batch.safetensors"))  # what `gradscope check` does
"""

from gradscope.checks.grads import GradThresholds
from gradscope.data.pipelines import DataOptions
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
import gradscope.render.html  # noqa: F401  (installs the HTML view behind Report.to_html and _repr_html_)
from gradscope.report.check import Report, SampleReport, TokenReport
from gradscope.report.finding import Finding
from gradscope.data.rows import RoleRow
from gradscope.report.roles import RolesReport
from gradscope.report.scan import ScanReport
from gradscope.report.weights import DirectionCheck, GradReport, ModuleGrad, OverfitReport, ParamGrad, VerifyReport
from gradscope.scan.dataset import scan
from gradscope.verbs.check import check, check_batches
from gradscope.verbs.options import CheckOptions
from gradscope.verbs.files import Inputs, check_files, grads_files, inspect_files, roles_files, verify_files
from gradscope.verbs.grads import grads
from gradscope.verbs.overfit import overfit
from gradscope.verbs.verify import verify

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
