"""``check``: run a batch through the model with hooks and probes, analyze, and build the Report."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from gradscope.checks.masking import analyze
from gradscope.checks.roles import label_facts, labels_evidence, roles_unknown
from gradscope.checks.sample import SampleView
from gradscope.checks.structure import (
    CallFacts,
    accumulation_mismatch,
    aux_loss_reaches_padding,
    call_facts,
    causal_leak,
    cross_document_leak,
    uneven_token_weights,
)
from gradscope.constants import ROLE_CODES_KEY
from gradscope.data.batch import document_starts, prepare_batch, real_tokens
from gradscope.data.token_roles import UNKNOWN_SOURCE, batch_roles, role_sources
from gradscope.data.tokens import default_end_token_ids, media_token_ids, resolve_pad_token_id
from gradscope.engine.accumulate import Accumulation
from gradscope.engine.aux_path import padding_path
from gradscope.engine.loss_only import LOGITS_DEPTH_NOTE, NOT_RUN_AT_LOGITS, forward_loss_backward
from gradscope.engine.probes import PROBES, ProbeRun
from gradscope.engine.run import Capture, forward_backward
from gradscope.errors import DataError, InputError
from gradscope.model.layers import input_embeddings
from gradscope.model.prepare import describe_model, to_device
from gradscope.model.usercode import LossFn
from gradscope.modes import DEPTHS, Depth
from gradscope.report.check import AccumulationReport, ProbeReport, Report
from gradscope.report.finding import Finding
from gradscope.tokenizer import Tokenizer
from gradscope.verbs.options import CheckKeywords, CheckOptions, check_options
from gradscope.verbs.samples import sample_report, sample_views

if TYPE_CHECKING:
    from typing_extensions import Unpack


def check(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    tokenizer: Tokenizer | None = None,
    options: CheckOptions | None = None,
    **keywords: Unpack[CheckKeywords],
) -> Report:
    """Check which tokens one batch trains and flag every masking leak.

    Args:
        model: A loaded causal LM (any ``*ForCausalLM``). It is called as ``model(**batch)`` and left as it was.
        batch: ``input_ids`` (B, T) and optionally ``labels``, ``attention_mask``, ``position_ids``, other model
            inputs, and a role tensor ``completion_mask`` or ``assistant_masks`` (1 = a token meant to be trained).
            Absent ``labels`` means input_ids with -100 where attention_mask is 0.
        tokenizer: Decodes token texts and names the end and pad tokens; optional.
        options: A ``CheckOptions`` holding the options below; the keywords given override its fields.
        loss_fn: ``fn(logits, labels) -> scalar`` replacing the model's own loss.
        keep_dropout: Leave dropout on (the report is then not deterministic).
        end_token_ids: Token ids that close a completion; by default EOS from the config and tokenizer plus the
            tokenizer's end-of-turn tokens.
        probes: Structural probes to run, from ``causal``, ``packing``, ``weights`` (default: all).
        accumulate: Also re-run the batch as this many accumulated micro-batches and compare gradients.
        windows: Random-projection windows per row for the causal and packing probes, on top of the free screen
            of the core run's gradient; each costs about one activation-only backward pass.
        response_template: Without a role tensor: the text that starts each completion, found as tokens.
        instruction_template: With response_template: the text that starts each later prompt turn.
        roles_from: Without a role tensor: the raw rows (a data file) the batch was made from; each batch row's
            tokens must be that row's tokens, in order.
        train_on: ``all-assistant`` or ``last-assistant``, for roles read from chat-template markers or raw chats.

    Without any of these, roles come from the tokenizer's chat template (see docs/roles.md); rows whose roles cannot
    be derived get a ``roles_unknown`` warning: the report is not verified.
        depth: ``"full"`` (forward and a backward through the network: layer norms, causal and packing probes) or
            ``"logits"``, the masking-only depth: a forward without autograd through the network and the loss's own
            backward, giving the same trained map, targets, weights, losses and masking findings for about a
            forward pass; layer and embedding norms and the causal and packing probes are then reported as not run.

    Returns:
        The Report; ``report.ok`` is False when there is an error finding.

    Raises:
        InputError: the batch does not fit the model, or the model/loss fails on it, or an unknown probe.
    """
    return check_batches(model, [batch], tokenizer=tokenizer, options=check_options(options, keywords))


def check_batches(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    tokenizer: Tokenizer | None = None,
    source: str | None = None,
    options: CheckOptions | None = None,
    **keywords: Unpack[CheckKeywords],
) -> Report:
    """``check`` over several batches, one forward and backward each (plus the probes'), merged into one Report.

    Samples are numbered across batches in order, so a finding's ``sample`` is the row of the data.
    """
    o = check_options(options, keywords)
    loss_fn, keep_dropout, probes, accumulate, windows, depth = (
        o.loss_fn,
        o.keep_dropout,
        o.probes,
        o.accumulate,
        o.windows,
        o.depth,
    )
    chosen = chosen_probes(probes, accumulate, windows)
    full_depth = chosen_depth(depth) == "full"
    runner = forward_backward if full_depth else forward_loss_backward
    # only the accumulation probe reads the loss -> logits graph; the logits depth has no other graph. The windows
    # need the network's: kept when they always run (--windows), else run again only where the screen fires
    graph_options = {"loss_graph": bool(accumulate), "rerun": not (accumulate or windows)} if full_depth else {}
    ends = o.end_token_ids if o.end_token_ids is not None else default_end_token_ids(model, tokenizer)
    report = Report(model=describe_model(model, loss_fn), depth=depth)
    report.notes += [] if full_depth else [LOGITS_DEPTH_NOTE]
    runs, packed = [], (0, 0)
    weight = cast(torch.Tensor, input_embeddings(model).weight)
    device = weight.device  # the first device when layers are spread (device_map)
    pad_id = resolve_pad_token_id(model, tokenizer)
    media = media_token_ids(model, tokenizer)
    sources = role_sources(tokenizer, ends, o.response_template, o.instruction_template, o.roles_from, o.train_on)
    unknown: list[tuple[int, str | None]] = []
    said: tuple[list[int], list[int]] = ([], [])  # what the labels of those samples establish (label_facts)
    for index, batch in enumerate(batches):
        full = prepare_batch(model, batch, source, first_row=len(report.samples))
        read = batch_roles(full, tokenizer, ends, sources, first_row=len(report.samples))
        if read.codes is not None:
            full[ROLE_CODES_KEY] = read.codes
        _require_rows(full, accumulate, index, source)
        starts = document_starts(full)
        run = ProbeRun(
            starts,
            real_tokens(full),
            causal="causal" in chosen and full_depth,
            packing="packing" in chosen and full_depth,
            per_row=windows,
            micro_batches=accumulate,
        )
        capture = runner(
            model,
            to_device(full, device),
            loss_fn=loss_fn,
            keep_dropout=keep_dropout,
            after_backward=run if run.needed else None,  # a graph kept for nothing costs the logits' memory
            **graph_options,
        )
        views = sample_views(
            full, capture, tokenizer, ends, pad_id, len(report.samples), starts if "packing" in chosen else None, media
        )
        findings = analyze(capture, views, full["labels"])
        if not any(f.check == "nonfinite" for f in findings):
            facts = call_facts(model, full, _restarts(full))
            findings += _structural_findings(run, capture, views, facts, starts, chosen)
            if full_depth:
                findings += _padding_reached(model, to_device(full, device), capture, views, loss_fn, keep_dropout)
            if run.accumulation is not None:
                result, finding = _accumulation(run.accumulation, capture, index)
                report.accumulation.append(result)
                findings += [finding] if finding is not None else []
        report.findings += findings
        report.samples += [sample_report(v, full, capture, i, read.sources[i]) for i, v in enumerate(views)]
        unjudged = [(v, read.reasons[i]) for i, v in enumerate(views) if read.sources[i] == UNKNOWN_SOURCE]
        unknown += [(v.index, reason) for v, reason in unjudged]
        copies, masks = label_facts([v for v, _ in unjudged])
        said = (said[0] + copies, said[1] + masks)
        report.losses.append(capture.loss)
        runs.append(run)
        extent = _packing_extent(starts, real_tokens(full))
        packed = (packed[0] + extent[0], packed[1] + extent[1])
    finding = roles_unknown([i for i, _ in unknown], [r for _, r in unknown], evidence=labels_evidence(*said))
    report.findings += [finding] if finding is not None else []
    report.probes = _probe_reports(runs, chosen, packed)
    for name in () if full_depth else ("causal", "packing"):
        report.probes[name] = ProbeReport(note=NOT_RUN_AT_LOGITS if name in chosen else "not chosen (--probes)")
    return report


def chosen_probes(probes: Iterable[str], accumulate: int | None = None, windows: int = 0) -> frozenset[str]:
    """The probe names, checked; ``accumulate`` must be a number of micro-batches >= 1, ``windows`` >= 0.

    Raises:
        InputError: an unknown probe name, a bad number of micro-batches or of windows.
    """
    names = frozenset(probes)
    unknown = sorted(names - set(PROBES))
    if unknown:
        raise InputError(f"unknown probe {', '.join(map(repr, unknown))}", hint=f"choose from {', '.join(PROBES)}")
    if accumulate is not None and accumulate < 1:
        raise InputError(f"`accumulate` {accumulate}: the number of micro-batches must be at least 1")
    if windows < 0:
        raise InputError(f"`windows` {windows}: the number of windows per row must be at least 0")
    return names


def chosen_depth(depth: Depth) -> str:
    """``depth``, checked.

    Raises:
        InputError: a depth other than those in DEPTHS.
    """
    if depth not in DEPTHS:
        raise InputError(f"depth {depth!r} is not known", hint=f"choose from {', '.join(DEPTHS)}")
    return depth


def _require_rows(batch: Mapping[str, torch.Tensor], accumulate: int | None, index: int, source: str | None) -> None:
    rows = len(batch["input_ids"])
    if accumulate and accumulate > rows:
        raise DataError(
            f"batch {index} has {rows} row(s), too few to split into {accumulate} micro-batches",
            path=source,
            hint="give `accumulate` at most the number of rows (with JSONL, raise `batch_size`)",
        )


def _restarts(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(B, T) bool: where position_ids restart, the only boundaries sdpa and eager attention honour."""
    return document_starts({k: v for k, v in batch.items() if k in ("input_ids", "position_ids")})


def _structural_findings(
    run: ProbeRun,
    capture: Capture,
    views: list[SampleView],
    facts: CallFacts,
    starts: torch.Tensor,
    chosen: frozenset[str],
) -> list[Finding]:
    """causal_leak and cross_document_leak per sample, then the batch's uneven_token_weights."""
    found: list[Finding | None] = []
    if run.dependence is not None:
        dep = run.dependence
        for row, view in enumerate(views):
            mine = [w for w in dep.windows if w.row == row]
            found.append(causal_leak(view.index, mine, dep.seen[:, row], facts, row))
            found.append(cross_document_leak(view.index, mine, dep.seen[:, row], facts, row))
    if "weights" in chosen:
        trained = capture.logit_grad_norm > 0
        found.append(uneven_token_weights(capture.weight, trained, starts.cumsum(1), [v.index for v in views]))
    return [f for f in found if f is not None]


def _padding_reached(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    capture: Capture,
    views: list[SampleView],
    loss_fn: LossFn | None,
    keep_dropout: bool,
) -> list[Finding]:
    """aux_loss_reaches_padding per sample: run only where the core run's gradient reaches a pad's embedding."""
    pad = ~real_tokens(batch)
    if not (pad & (capture.embedding_grad_norm > 0)).any():
        return []
    path = padding_path(model, batch, pad, loss_fn=loss_fn, keep_dropout=keep_dropout)
    found = []
    for row, view in enumerate(views):
        positions = path.reached[row].nonzero().flatten().tolist()
        norm, total = float(path.norms[row].norm()), float(capture.embedding_grad_norm[row].norm())
        found.append(aux_loss_reaches_padding(view.index, positions, norm, total, path.modules))
    return [f for f in found if f is not None]


def _accumulation(acc: Accumulation, capture: Capture, index: int) -> tuple[AccumulationReport, Finding | None]:
    """The accumulation section entry of batch ``index`` and its accumulation_mismatch, if any."""
    trained = capture.logit_grad_norm > 0
    counts = [int(trained[rows].sum()) for rows in acc.rows]
    result = AccumulationReport(index, acc.micro_batches, acc.cosine, acc.relative_error, counts)
    return result, accumulation_mismatch(acc, counts, index)


def _probe_reports(runs: list[ProbeRun], chosen: frozenset[str], packed: tuple[int, int]) -> dict[str, ProbeReport]:
    """The probes section: what each probe covered and cost, summed over the batches.

    Args:
        runs: Each batch's probe run.
        chosen: The chosen probes.
        packed: (document boundaries, packed rows) in the data.
    """
    screens = [r.screen for r in runs if r.screen is not None]
    cuts = sum(w.future for r in runs for w in r.windows)
    tested = len({(i, w.row, w.start) for i, r in enumerate(runs) for w in r.windows if w.boundary})
    after = sum(int(s.after.sum()) for s in screens)
    screened = sum(s.boundaries for s in screens)
    reports = {
        "causal": _vjp_report(runs, after + cuts > 0, ["packing"] if tested else [], _causal_note(runs, cuts)),
        "packing": _vjp_report(
            runs,
            screened + tested > 0,
            ["causal"] if cuts else [],
            f"{screened} of {packed[0]} document boundaries screened at no cost by the loss's own gradient, {tested} "
            f"tested by random-projection windows, in {packed[1]} packed row(s)",
        ),
        "weights": ProbeReport(ran=True, note="token weights read off the core run's logit gradient: no extra pass"),
    }
    if not packed[0]:
        reports["packing"].note = "no packed rows: no position_ids restart, seq_idx or cu_seq_lens_q/k boundary"
    for name in PROBES:
        if name not in chosen:
            reports[name] = ProbeReport(note="not chosen (--probes)")
    accumulations = [r.accumulation for r in runs if r.accumulation is not None]
    if accumulations:
        reports["accumulate"] = ProbeReport(
            ran=True,
            seconds=sum(a.seconds for a in accumulations),
            forward_passes=sum(a.micro_batches for a in accumulations),
            note=f"{accumulations[0].micro_batches} micro-batches per batch; gradients compared at the logits",
        )
    return reports


def _causal_note(runs: list[ProbeRun], cuts: int) -> str:
    """What the causal probe covered: the screen's tokens, the windows' cuts, and rows the windows left unexplained."""
    screens = [r.screen for r in runs if r.screen is not None]
    after = sum(int(s.after.sum()) for s in screens)
    rows = sum(int(s.after.any(1).sum()) for s in screens)
    note = (
        f"free screen of the loss's own gradient: {after} token(s) after the last trained logit of their document, "
        f"in {rows} row(s); {cuts} random-projection cut(s)"
    )
    unexplained = sum(len(r.unexplained) for r in runs)
    if unexplained:
        note += (
            f"; in {unexplained} row(s) the loss's gradient reaches such tokens but no window of the chosen probes "
            "shows a logit depending on them (a loss term outside the logits, such as an auxiliary loss, does that)"
        )
    return note


def _vjp_report(runs: list[ProbeRun], ran: bool, shared: list[str], note: str) -> ProbeReport:
    """The causal or packing entry: the screen's time plus the windows' backward passes (shared by both)."""
    if not ran:
        return ProbeReport(note="nothing to test")
    deps = [r.dependence for r in runs if r.dependence is not None]
    return ProbeReport(
        ran=True,
        seconds=sum(r.screen.seconds for r in runs if r.screen is not None) + sum(d.seconds for d in deps),
        backward_passes=sum(d.passes for d in deps),
        batched=all(d.batched for d in deps) if deps else None,
        shared=shared,
        note=note,
    )


def _packing_extent(starts: torch.Tensor, real: torch.Tensor) -> tuple[int, int]:
    """(document boundaries between real tokens, rows holding more than one document)."""
    inner = starts & real
    return int(inner.sum()), int(inner.any(1).sum())
