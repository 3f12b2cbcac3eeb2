"""JSON views: a report (schema v1) and role rows."""

from __future__ import annotations

import json

from gradscope.constants import ROLE_NAMES
from gradscope.render.sanitize import json_text
from gradscope.report.check import Report, SampleReport, TokenReport
from gradscope.report.roles import RolesReport, RolesRow
from gradscope.report.scan import ScanReport


def to_json(report: Report | ScanReport) -> str:
    """The JSON form of a report (schema v1), safe to print in a CI log (``gradscope.render.sanitize``)."""
    return json_text(json.dumps(report.to_dict(), indent=2))


def roles_sample(row: RolesRow, texts: list[str]) -> SampleReport:
    """A derived row as a SampleReport with nothing run, so that TokenStrip can draw it (labels: the reference's)."""
    tokens = [
        TokenReport(t, i, text, ROLE_NAMES[r], label, False, None, None, None, 0.0, 0.0)
        for t, (i, text, r, label) in enumerate(zip(row.input_ids, texts, row.roles, row.labels, strict=True))
    ]
    return SampleReport(index=row.index, tokens=tokens, layer_grad_norms=[])


def roles_to_json(report: RolesReport) -> str:
    """The ``gradscope roles --format json`` document."""
    out = []
    for row, texts in zip(report.rows, report.texts, strict=True):
        tokens = [
            {"position": t, "token_id": i, "text": text, "role": ROLE_NAMES[r], "message": m, "label": label}
            for t, (i, text, r, m, label) in enumerate(
                zip(row.input_ids, texts, row.roles, row.messages, row.labels, strict=True)
            )
        ]
        out.append({"index": row.index, "format": row.kind, "completion_cut": row.cut, "tokens": tokens})
    return json_text(json.dumps({"schema_version": 1, "data": report.data, "rows": out}, indent=2))
