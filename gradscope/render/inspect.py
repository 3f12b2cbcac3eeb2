"""The inspect and roles views: a token table, the layer x position heat map, role rows."""

from __future__ import annotations

import math
from collections.abc import Iterable

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from gradscope.constants import ROLE_NAMES
from gradscope.render.check import LEAK_STYLE, ROLE_STYLES, TokenStrip, findings_table, model_line, token_label
from gradscope.render.json import roles_sample
from gradscope.report.check import Report, SampleReport
from gradscope.report.roles import RolesReport
from gradscope.report.text import format_number

HEAT = ["grey23", "blue", "cyan", "green", "yellow", "dark_orange", "red"]


def token_table(sample: SampleReport, flagged: set[int]) -> Table:
    """Per-token table of one sample."""
    table = Table(title=f"sample {sample.index}: per token", title_justify="left")
    for name in ("pos", "token", "id", "role", "label", "trained", "target", "loss", "weight", "∇logits", "∇emb"):
        table.add_column(name, justify="left" if name in ("token", "role") else "right")
    for t in sample.tokens:
        style = LEAK_STYLE if t.position in flagged else ROLE_STYLES.get(t.role, "white")
        table.add_row(
            str(t.position),
            Text(token_label(t), style=style),
            str(t.token_id),
            t.role or "?",
            str(t.label),
            "yes" if t.trained else "",
            "" if t.target_id is None else str(t.target_id),
            format_number(t.loss),
            format_number(t.weight) if t.trained else "",
            format_number(t.logit_grad_norm, 3),
            format_number(t.embedding_grad_norm, 3),
        )
    return table


class HeatMap:
    """Layers x positions gradient norms, one cell per position, colour on a log scale."""

    def __init__(self, sample: SampleReport) -> None:
        self.sample = sample

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        emb = [t.embedding_grad_norm for t in self.sample.tokens]
        rows = (
            [("emb", [x for x in emb if x is not None])] if None not in emb else []
        )  # None: not computed (depth logits)
        rows += [(f"L{i}", norms) for i, norms in enumerate(self.sample.layer_grad_norms)]
        scale = LogScale(v for _, norms in rows for v in norms)
        width = max(8, options.max_width - 8)
        yield Text(f"sample {self.sample.index}: ‖∂L/∂h‖ per layer output (rows) and position (columns)", style="bold")
        for start in range(0, len(self.sample.tokens), width):
            yield Text(f"pos {start}–{min(start + width, len(self.sample.tokens)) - 1}", style="grey50")
            for name, norms in rows:
                line = Text(f"{name:>5}  ")
                for v in norms[start : start + width]:
                    line.append("█", style=HEAT[scale(v)])
                yield line
        yield Text.assemble("scale: ", *[("█", c) for c in HEAT], f"  {scale.low:.2g} … {scale.high:.2g} (log)")


class LogScale:
    """Maps a norm to a HEAT index on a log scale between the smallest and largest positive norms."""

    def __init__(self, values: Iterable[float]) -> None:
        positive = [v for v in values if v > 0 and math.isfinite(v)]
        self.low = min(positive, default=1.0)
        self.high = max(positive, default=1.0)

    def __call__(self, v: float) -> int:
        if not (v > 0 and math.isfinite(v)):
            return 0 if v == 0 else len(HEAT) - 1
        span = math.log(self.high) - math.log(self.low)
        frac = 1.0 if span == 0 else (math.log(v) - math.log(self.low)) / span
        return 1 + min(len(HEAT) - 2, int(frac * (len(HEAT) - 1)))


class InspectView:
    """The ``gradscope inspect`` view of one row: findings for it, the per-token table and the heat map."""

    def __init__(self, report: Report, sample: SampleReport) -> None:
        self.report, self.sample = report, sample

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        mine = [f for f in self.report.findings if f.sample in (self.sample.index, None)]
        flagged = {p for f in mine for p in f.positions}
        yield Text(model_line(self.report), style="grey50")
        yield token_table(self.sample, flagged)
        yield HeatMap(self.sample)
        if mine:
            sub = Report(model=self.report.model, findings=mine)
            yield findings_table(sub)
        else:
            yield Text(f"✓ no finding for sample {self.sample.index}", style="bold green")


class RolesView:
    """The ``gradscope roles`` terminal view: one token strip per row, coloured by role."""

    def __init__(self, report: RolesReport, max_rows: int = 8) -> None:
        self.rows, self.texts, self.max_rows = report.rows, report.texts, max_rows

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for row, texts in zip(self.rows[: self.max_rows], self.texts, strict=False):
            roles = [ROLE_NAMES[r] for r in row.roles]
            title = (
                f"row {row.index} ({row.kind}): {len(roles)} tokens, {roles.count('completion')} completion, "
                f"{roles.count(None)} not judged"
                + (f", {row.cut} completion tokens cut by --max-length" if row.cut else "")
            )
            yield TokenStrip(roles_sample(row, texts), set(), title)
            yield Text()
        if len(self.rows) > self.max_rows:
            yield Text(f"… {len(self.rows) - self.max_rows} more row(s) not shown (--show N)", style="grey50")
        yield Text.assemble(
            "legend: ",
            ("prompt", ROLE_STYLES["prompt"]),
            "  ",
            ("completion", ROLE_STYLES["completion"]),
            "  ",
            ("not judged (template glue after a closing token)", ROLE_STYLES[None]),
            ("  · separates tokens", "grey42"),
        )
