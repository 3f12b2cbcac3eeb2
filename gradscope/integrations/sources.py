"""What the watched step gives the roles engine (``gradscope.data.token_roles``) to read roles from: the
prompt_ids / completion_ids of an RL trainer's inputs (GRPO), role tensors in the trainer's inputs, the trainer's
own train_dataset (its raw prompt/completion or messages columns, re-tokenized by gradscope and matched to the batch
by token ids; preference rows' prompt + chosen / rejected ids), and the template the data is rendered with. The
engine reads them in its one order; a row none of them explains is *not judged* (roles unknown): a non-chat
prompt-completion row is never called all-prompt."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from gradscope.constants import COMPLETION, PROMPT, ROLE_KEYS
from gradscope.data.batch import roles
from gradscope.data.roles import RoleSpec, derive, row_kind
from gradscope.data.token_roles import UNKNOWN_SOURCE, RoleSources, batch_roles
from gradscope.errors import DataError
from gradscope.tokenizer import Tokenizer


class DatasetRoles:
    """Roles of the trainer's dataset rows, found by token ids; gradscope derives them from the raw columns.

    Args:
        dataset: The trainer's (prepared) train_dataset: ``input_ids`` plus ``prompt``/``completion`` or
            ``messages`` (TRL keeps them unless packing).
        tokenizer: The trainer's tokenizer.
        spec: How gradscope splits rows into roles.
    """

    def __init__(self, dataset: Any, tokenizer: Tokenizer | None, spec: RoleSpec) -> None:
        self.dataset, self.tokenizer, self.spec = dataset, tokenizer, spec
        self.mismatched: list[int] = []  # dataset rows gradscope tokenizes differently from the trainer
        columns = set(getattr(dataset, "column_names", None) or [])
        probe = {c: None for c in columns}
        self.usable = "input_ids" in columns and tokenizer is not None and row_kind(probe) != ""
        self._lengths: torch.Tensor | None = None

    def roles(self, ids: list[int]) -> list[int] | None:
        """Role codes of the dataset row whose input_ids are ``ids``, or None when there is none."""
        if not self.usable:
            return None
        for index in self._candidates(len(ids)):
            if list(self.dataset[index]["input_ids"]) == ids:
                return self._derive(index, ids)
        return None

    def _candidates(self, length: int) -> list[int]:
        """Rows of that length, read from the Arrow offsets (no row is decoded)."""
        if self._lengths is None:
            column = self.dataset.data.column("input_ids").combine_chunks()
            offsets = torch.tensor(column.offsets.to_numpy(zero_copy_only=False).astype("int64"))
            self._lengths = offsets[1:] - offsets[:-1]
            indices = getattr(self.dataset, "_indices", None)
            if indices is not None:  # a selected/shuffled Dataset: map positions through its indices mapping
                order = torch.tensor(indices.column(0).to_numpy().astype("int64"))
                self._lengths = self._lengths[order]
        return (self._lengths == length).nonzero().flatten().tolist()

    def _derive(self, index: int, ids: list[int]) -> list[int] | None:
        row = {k: v for k, v in self.dataset[index].items() if k in ("prompt", "completion", "messages", "tools")}
        if self.tokenizer is None:  # not usable: roles() never gets here
            return None
        try:
            derived = derive(row, index, self.tokenizer, self.spec)
        except DataError:
            derived = None
        if derived is None or derived.input_ids != ids:
            self.mismatched.append(index)
            return None
        return derived.roles


class PreferenceRoles:
    """Roles of preference rows (TRL's DPO dataset: ``prompt_ids`` with ``chosen_ids`` / ``rejected_ids``): the
    prompt's tokens are prompt, the chosen or rejected tokens completion; the dataset's own split, so a collator's
    completion_mask is checked against it rather than trusted."""

    def __init__(self, dataset: Any) -> None:
        columns = set(getattr(dataset, "column_names", None) or [])
        self.usable = {"prompt_ids", "chosen_ids", "rejected_ids"} <= columns
        self._prompt_length: dict[tuple[int, ...], int] = {}
        if self.usable:
            for prompt, *answers in zip(
                dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True
            ):
                for answer in answers:
                    self._prompt_length[tuple(prompt) + tuple(answer)] = len(prompt)

    def roles(self, ids: list[int]) -> list[int] | None:
        """Role codes of a prompt + chosen/rejected sequence of the dataset, or None when it is not one."""
        n = self._prompt_length.get(tuple(ids))
        return None if n is None else [PROMPT] * n + [COMPLETION] * (len(ids) - n)


RL_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
"""Inputs of TRL's online RL trainers (GRPO, RLOO): the model is called on prompt_ids + completion_ids."""


@dataclass
class RLRows:
    """Roles of an observed forward over an RL batch, and the rows its loss leaves untrained on purpose."""

    codes: torch.Tensor  # (B, T) role codes
    idle: list[int]  # rows with advantage 0 or an empty loss mask: no gradient is expected there


def rl_rows(inputs: Mapping[str, Any], given: Mapping[str, Any]) -> RLRows | None:
    """Roles of a forward over TRL's RL inputs (``prompt_ids``/``prompt_mask``, ``completion_ids``/
    ``completion_mask``, ``advantages``, optional ``tool_mask``), or None when the inputs are not those.

    The prompt's tokens are prompt; completion tokens in the loss mask (completion_mask, times tool_mask) are
    completion; tool output inside the completion is prompt (the model does not produce it). Each observed row is
    matched to a row of prompt_ids + completion_ids by its token ids, so a forward over a sub-batch is read too.
    """
    if not all(isinstance(given.get(k), torch.Tensor) for k in RL_KEYS):
        return None
    prompt, _, completion, mask = (given[k].detach().cpu() for k in RL_KEYS)
    full, ids = torch.cat([prompt, completion], 1), inputs["input_ids"]
    if full.shape[1] != ids.shape[1]:
        return None
    loss_mask = mask.bool()
    if isinstance(given.get("tool_mask"), torch.Tensor) and given["tool_mask"].shape == mask.shape:
        loss_mask &= given["tool_mask"].detach().cpu().bool()
    codes = torch.cat([torch.full_like(prompt, PROMPT), torch.where(loss_mask, COMPLETION, PROMPT)], 1).long()
    advantages = given.get("advantages")
    active = loss_mask.any(1)
    if isinstance(advantages, torch.Tensor):
        adv = advantages.detach().cpu().reshape(len(full), -1)
        if adv.shape[1] in (1, loss_mask.shape[1]):
            active &= ((adv != 0) & loss_mask).any(1)
    rows, free = [], list(range(len(full)))
    for row in ids.detach().cpu():
        match = next((j for j in free if torch.equal(full[j], row)), None)
        if match is None:
            return None
        free.remove(match)
        rows.append(match)
    return RLRows(codes[rows], [b for b, j in enumerate(rows) if not active[j]])


def step_roles(
    inputs: Mapping[str, Any], context: Mapping[str, Any], tokenizer: Any, ends: frozenset[int], sources: RoleSources
) -> tuple[torch.Tensor, list[str | None]]:
    """Role codes (B, T) of one observed forward and, per row, which source gave them (None: not judged), read by
    the roles engine (``gradscope.data.token_roles.batch_roles``) like every other route. A role tensor the trainer's
    ``compute_loss`` received but the model did not is the batch's too."""
    batch = dict(inputs)
    given = context.get("inputs", {})
    for key in ROLE_KEYS:
        mask = given.get(key)
        if key not in batch and isinstance(mask, torch.Tensor) and mask.shape == inputs["input_ids"].shape:
            batch[key] = mask.detach().cpu()
    read = batch_roles(batch, tokenizer, ends, sources)
    if read.codes is None:  # the batch's own role tensor, as the checks read it
        return roles(batch), ["inputs"] * len(read.sources)
    return read.codes, [None if name == UNKNOWN_SOURCE else name for name in read.sources]


def rendered_with(trainer: Any) -> str | None:
    """The chat template the trainer's data is really rendered with when it is not the tokenizer's: TRL keeps the
    training template it swaps in for ``assistant_only_loss`` on the trainer (``chat_template``); a collator may be
    given one."""
    for owner in (trainer, getattr(trainer, "data_collator", None)):
        template = getattr(owner, "chat_template", None)
        if isinstance(template, str) and template:
            return template
    return None
