"""The check on an overfit curve."""

from __future__ import annotations

import math

from gradscope.report.finding import Finding
from gradscope.report.text import format_count
from gradscope.report.weights import OverfitReport

MIN_DROP = 0.5
"""The loss "drops" when the last loss is at most (1 - MIN_DROP) times the first: it at least halves."""


def dropped(losses: list[float], min_drop: float = MIN_DROP) -> bool:
    """The last loss is finite and at most (1 - min_drop) times the first."""
    first, last = losses[0], losses[-1]
    return math.isfinite(first) and math.isfinite(last) and last <= (1 - min_drop) * first


def cannot_overfit(o: OverfitReport, trainable: int) -> Finding | None:
    """The loss of the one batch did not drop by ``min_drop`` in N steps."""
    if o.dropped:
        return None
    first, last = o.losses[0], o.losses[-1]
    if trainable == 0:
        cause = "nothing is trainable, so no step changes anything"
    elif not (math.isfinite(first) and math.isfinite(last)):
        cause = "the loss went non-finite: the learning rate is too high, or the loss divides by zero"
    else:
        cause = (
            "usual causes: parameters that receive no gradient, a loss that does not reach the weights, a learning "
            "rate far too small (try a larger `lr` or more steps before concluding), or a broken backward "
            "(run gradscope verify)"
        )
    return Finding(
        "cannot_overfit",
        "warning",
        None,
        [],
        f"the loss of one batch went from {first:.4g} to {last:.4g} in {format_count(o.steps, 'step')} of "
        f"{o.optimizer} at lr {o.lr:g}; it should at least fall by {o.min_drop:.0%} when the setup can learn at "
        f"all: {cause}.",
    )
