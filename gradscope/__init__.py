"""gradscope: read from the loss gradient which tokens a causal-LM fine-tune really trains, and what reaches the weights.

    >>> report = gradscope.check(model, batch, tokenizer=tokenizer)
    >>> report.ok, [f.check for f in report.findings]
    >>> gradscope.grads(model, batch, lr=2e-4).grads.global_norm
"""

from gradscope.check import check, check_batches
from gradscope.errors import (
    DataError,
    GradscopeError,
    InputError,
    LossSpecError,
    MaskingError,
    ModelCallError,
    ModelLoadError,
)
from gradscope.grads import GradThresholds, grads
from gradscope.overfit import overfit
from gradscope.pipelines import DataOptions
from gradscope.report import (
    DirectionCheck,
    Finding,
    GradReport,
    ModuleGrad,
    OverfitReport,
    ParamGrad,
    Report,
    SampleReport,
    ScanReport,
    TokenReport,
    VerifyReport,
)
from gradscope.scan import scan
from gradscope.verify import verify

__version__ = "0.1.0"

__all__ = [
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
    "ModuleGrad",
    "OverfitReport",
    "ParamGrad",
    "Report",
    "SampleReport",
    "ScanReport",
    "TokenReport",
    "VerifyReport",
    "check",
    "check_batches",
    "grads",
    "overfit",
    "verify",
    "scan",
]
