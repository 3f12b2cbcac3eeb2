"""Integrations: check the optimizer step a training run really takes, from inside the run.

    from gradscope.integrations import GradscopeCallback
    trainer = SFTTrainer(..., callbacks=[GradscopeCallback()])   # or gradscope.integrations.watch(trainer)

Any other loop (plain PyTorch, accelerate, torchtune, an RL actor update) uses the watcher the callback is built on:

    from gradscope.integrations import StepWatcher
    watcher = StepWatcher(model, tokenizer=tokenizer, dataset=rows)
    ...                 # the loop's forward and backward of every micro-batch of the first step
    watcher.check()     # before optimizer.step()

PyTorch Lightning: ``gradscope.integrations.lightning.GradscopeLightningCallback``.
"""

from gradscope.integrations.callback import REPORT_FILE, GradscopeCallback, watch
from gradscope.integrations.verdict import WatchedFinding, WatchedSample
from gradscope.integrations.watch import StepWatcher

__all__ = ["REPORT_FILE", "GradscopeCallback", "StepWatcher", "WatchedFinding", "WatchedSample", "watch"]
