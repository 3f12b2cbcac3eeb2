"""Stage 2, engine: forward and backward passes with hooks. It returns tensors and numbers, never findings.

``run`` is the core pass (one forward, one activation-only backward), ``logits`` reads the logits and their
gradient chunk by chunk, ``probes``/``windows``/``screen``/``accumulate`` are the structural probes, ``params`` the
parameter pass, ``finite_diff`` the verification, ``optimize`` the overfit steps.
"""
