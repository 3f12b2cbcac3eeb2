"""Report: plain dataclasses for what gradscope found, and their JSON form (schema v1). No printing here."""

from gradscope.report.check import AccumulationReport, ProbeReport, Report, SampleReport, TokenReport
from gradscope.report.finding import SCHEMA_VERSION, Finding, Severity
from gradscope.report.scan import SCAN_WARNINGS, ScanReport
from gradscope.report.text import format_findings
from gradscope.report.weights import DirectionCheck, GradReport, ModuleGrad, OverfitReport, ParamGrad, VerifyReport

__all__ = [
    "SCAN_WARNINGS",
    "SCHEMA_VERSION",
    "AccumulationReport",
    "DirectionCheck",
    "Finding",
    "GradReport",
    "ModuleGrad",
    "OverfitReport",
    "ParamGrad",
    "ProbeReport",
    "Report",
    "SampleReport",
    "ScanReport",
    "Severity",
    "TokenReport",
    "VerifyReport",
    "format_findings",
]
