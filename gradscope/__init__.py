"""gradscope: read from the loss gradient which tokens a causal-LM fine-tune really trains.

    >>> report = gradscope.check(model, batch, tokenizer=tokenizer)
    >>> report.ok, [f.check for f in report.findings]
"""

from gradscope.check import check, check_batches
from gradscope.errors import DataError, GradscopeError, InputError, LossSpecError, ModelCallError, ModelLoadError
from gradscope.report import Finding, Report, SampleReport, ScanReport, TokenReport
from gradscope.scan import scan

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "Finding",
    "GradscopeError",
    "InputError",
    "LossSpecError",
    "ModelCallError",
    "ModelLoadError",
    "Report",
    "SampleReport",
    "ScanReport",
    "TokenReport",
    "check",
    "check_batches",
    "scan",
]
