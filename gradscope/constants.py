"""The names gradscope gives to token roles and batch keys, and the masking rule: one place for each."""

from __future__ import annotations

IGNORE_INDEX = -100
"""The label that masks a token out of the loss (transformers' and PyTorch's ignore_index)."""

ROLE_KEYS = ("completion_mask", "assistant_masks")
"""Batch keys that carry the user's roles; they describe the batch and are not model inputs."""

ROLE_CODES_KEY = "gradscope_roles"
"""Role codes per token derived by gradscope (from raw data or a chat template); wins over ROLE_KEYS."""

CUT_KEY = "gradscope_cut"
"""(B,) completion tokens that truncation removed from each row."""

ROW_KEY = "gradscope_rows"
"""(B,) the data row each batch row holds, when a pipeline dropped or reordered rows (sample indices follow it)."""

META_KEYS = (*ROLE_KEYS, ROLE_CODES_KEY, CUT_KEY, ROW_KEY)
"""Every key that describes the batch rather than feeding the model."""

# Role codes, per position.
UNKNOWN, PROMPT, COMPLETION, PAD = -1, 0, 1, 2
ROLE_NAMES = {UNKNOWN: None, PROMPT: "prompt", COMPLETION: "completion", PAD: "pad"}

CU_SEQ_LENS_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k")
"""Cumulative document lengths over the flattened (B * T) batch, as flash-attention varlen reads them."""

# Defaults the command line declares; here so that parsing flags needs no torch.
DEFAULT_LR = 5e-5
"""transformers' ``TrainingArguments.learning_rate`` default."""
DEFAULT_MAX_GRAD_NORM = 1.0
"""transformers' ``TrainingArguments.max_grad_norm`` default."""
PROBES = ("causal", "packing", "weights")
"""The probes ``--probes`` chooses from; all run by default."""
WINDOWS_PER_ROW = 0
"""Random-projection windows per row on top of the screen, by default (``--windows``): each costs about one
activation-only backward pass, while the screen is free."""
