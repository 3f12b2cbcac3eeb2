"""The checks on a finite-difference verification."""

from __future__ import annotations

import math

from gradscope.report.finding import Finding
from gradscope.report.text import name_list
from gradscope.report.weights import DirectionCheck, VerifyReport


def nonfinite_loss(v: VerifyReport) -> Finding | None:
    """The loss is NaN or Inf, so there is no derivative to compare."""
    if math.isfinite(v.loss):
        return None
    return Finding(
        "nonfinite",
        "error",
        None,
        [],
        f"the loss is {v.loss} in {v.dtype}, so no gradient could be verified. Run gradscope check to see why.",
    )


def gradient_mismatch(v: VerifyReport) -> Finding | None:
    """Autograd disagrees with finite differences somewhere."""
    bad = [c for c in v.checks if not c.ok]
    if not bad:
        return None
    worst: dict[str, DirectionCheck] = {}
    for c in bad:
        if c.target not in worst or c.relative_error > worst[c.target].relative_error:
            worst[c.target] = c
    where = [
        f"{c.target} (relative error {c.relative_error:.3g} along the {c.direction} direction: autograd "
        f"{c.autograd:.4g}, finite differences {c.finite_difference:.4g})"
        for c in worst.values()
    ]
    return Finding(
        "gradient_mismatch",
        "error",
        None,
        [],
        f"autograd's gradient of the loss is not the derivative of the forward ({v.precision}, tolerance "
        f"{v.tolerance:g}): {name_list(where, limit=4)}. Usual causes: a custom torch.autograd.Function or fused loss "
        "kernel whose backward is wrong (a missing factor, a mean over the wrong count, ignored positions counted), "
        "or an in-place change to a tensor the backward saved.",
    )
