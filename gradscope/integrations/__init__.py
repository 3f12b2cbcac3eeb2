"""Integrations: check the optimizer step a training run really takes, from inside the run.

    from gradscope.integrations import GradscopeCallback
    trainer = SFTTrainer(..., callbacks=[GradscopeCallback()])   # or gradscope.integrations.watch(trainer)
"""

from gradscope.integrations.callback import REPORT_FILE, GradscopeCallback, watch
from gradscope.integrations.verdict import WatchedFinding, WatchedSample
from gradscope.integrations.watch import StepWatcher

__all__ = ["REPORT_FILE", "GradscopeCallback", "StepWatcher", "WatchedFinding", "WatchedSample", "watch"]
