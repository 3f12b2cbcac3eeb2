"""One batch, one verdict: every case of fixtures/catalogue.json through every route that can carry it gives the same
findings (check, sample, positions) and the same status, and every view of one report says that status.

Routes: the tensors as given (``check_batches`` on the .safetensors or .jsonl file: the reference); the same rows as
JSON lines; ``scan`` (labels only); ``assert_masking``; a transformers Trainer with ``GradscopeCallback``. The views
(terminal, HTML, JUnit, JSON) and the exit code are read from the reference report. A case a route cannot carry is
listed below with the reason. The raw-row routes (reference pipeline, ``--pipeline trl``, ``--collate``, and the rows
tokenized with ``--roles-from``) take raw rows, which the catalogue's tensors are not: they run on fixtures/raw. The
reports of the reference route are the session's (``catalogue_reports``); each fixture model is loaded once
(``fixture_model``).
"""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from rich.console import Console

import gradscope
from gradscope.cli import exit_code
from gradscope.data.load import load_batches
from gradscope.data.pipelines import DataOptions
from gradscope.model.usercode import load_loss_fn
from gradscope.render.check import CheckView
from gradscope.render.junit import to_junit
from gradscope.report.catalogue import CATALOGUE as CHECK_CATALOGUE
from gradscope.report.verdict import verdict
from gradscope.scan.dataset import scan
from gradscope.testing import assert_masking

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CATALOGUE = json.loads((FIXTURES / "catalogue.json").read_text())
NAMES = [c["name"] for c in CATALOGUE]

STRUCTURAL = frozenset(s.name for s in CHECK_CATALOGUE if s.probe or s.full_depth)
"""Findings of the structural probes: they need the model's gradient and the probes' extra passes."""

NO_SCAN_TWIN = frozenset(s.name for s in CHECK_CATALOGUE if s.scan is None)
"""Findings that ``scan`` cannot give (the catalogue's ``scan=``): a case expecting one is not carried by scan."""


def _keys(case: dict) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    if not case["data"].endswith(".safetensors"):
        return {}
    with safe_open(FIXTURES / case["data"], "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)


def _jsonl_cannot(case: dict) -> str | None:
    keys = _keys(case)
    if not keys:
        return "already JSON lines: it is the reference route"
    if any(len(shape) != 2 for shape in keys.values()):
        return "a 4D attention mask or a packing tensor (cu_seq_lens, max_length) is no JSON lines column"
    if set(keys) - {"input_ids", "labels", "attention_mask", "completion_mask"}:
        return "packing metadata (position_ids, seq_idx) is not read from JSON lines rows"
    return None


def _scan_cannot(case: dict) -> str | None:
    expected = {e["check"] for e in case["expect"]}
    if expected & STRUCTURAL or case.get("loss") or case.get("accumulate"):
        return "a structural probe's or the loss's finding: scan reads labels, runs no model"
    if "vlm" in case["name"]:
        return "media tokens are named by the model config, which scan does not load"
    if expected & NO_SCAN_TWIN:
        return "a check without a scan twin (the catalogue's scan=None): it needs the model's gradient or config"
    if case.get("roles_from"):
        return "scan reads no raw rows beside a tokenized file (roles_from)"
    if _keys(case).get("attention_mask", (0, 0, 0)).__len__() == 4:
        return "a 4D attention mask: scan reads 2D masks"
    if any(k in _keys(case) for k in ("cu_seq_lens_q", "seq_idx", "position_ids")):
        return "packed rows' structural probes (boundary, cache) need the model"
    return None


def _assert_masking_cannot(case: dict) -> str | None:
    if case.get("batch_size"):
        return "JSON lines read in several batches: assert_masking takes one batch"
    return None


ROUTES = {"jsonl": _jsonl_cannot, "scan": _scan_cannot, "assert_masking": _assert_masking_cannot}


def test_routes_that_cannot_carry_a_case_say_why():
    """The exclusions are explicit, and each route carries most of the catalogue."""
    for route, cannot in ROUTES.items():
        carried = [c["name"] for c in CATALOGUE if cannot(c) is None]
        assert len(carried) >= 20, (route, carried)


def found(report: gradscope.Report | gradscope.ScanReport) -> list[tuple[str, int | None, list[int]]]:
    return [(f.check, f.sample, list(f.positions)) for f in report.findings]


def status_in_views(report: gradscope.Report) -> dict[str, str]:
    out = io.StringIO()
    Console(file=out, width=200, highlight=False).print(CheckView(report))
    first = out.getvalue().splitlines()[0]
    terminal = next(s for s in ("clean", "not verified", "warnings", "errors") if s in first.split(":")[0])
    page = report.to_html()
    banner = re.search(r'role="status" data-status="([a-z ]+)"', page)
    title = re.search(r"<title>gradscope [a-z]+: ([a-z ]+)</title>", page)
    suites = ET.fromstring(to_junit(report)).findall("testsuite")
    [case] = [c for s in suites if s.get("name") == "gradscope.verdict" for c in s.findall("testcase")]
    return {
        "terminal": terminal,
        "html": banner.group(1) if banner else "",
        "title": title.group(1) if title else "",
        "junit": case.get("name") or "",
        "json": json.loads(json.dumps(report.to_dict()))["summary"]["status"],
    }


def case_of(name: str) -> dict:
    return next(c for c in CATALOGUE if c["name"] == name)


@pytest.mark.parametrize("name", NAMES)
def test_every_view_says_the_one_status(name, catalogue_reports):
    report = catalogue_reports[name]
    status = verdict(report).status
    assert set(status_in_views(report).values()) == {status}
    assert exit_code(report, strict=False) == int(verdict(report).fails())
    assert sorted({(e["check"], e["sample"]) for e in case_of(name)["expect"]}, key=str) == sorted(
        {(f.check, f.sample) for f in report.findings}, key=str
    )


@pytest.mark.parametrize("name", [n for n in NAMES if _jsonl_cannot(case_of(n)) is None])
def test_json_lines_route(name, catalogue_reports, fixture_model, tmp_path):
    case = case_of(name)
    model, tokenizer = fixture_model(case["model"], case.get("trust_remote_code", False))
    [batch] = load_batches(FIXTURES / case["data"], pad_token_id=tokenizer.pad_token_id)
    rows = [{k: v[b].tolist() for k, v in batch.items()} for b in range(len(batch["input_ids"]))]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    batches = load_batches(path, pad_token_id=tokenizer.pad_token_id, batch_size=len(rows))
    loss_fn = load_loss_fn(str(FIXTURES / case["loss"])) if "loss" in case else None
    roles_from = FIXTURES / case["roles_from"] if "roles_from" in case else None
    report = gradscope.check_batches(
        model,
        batches,
        tokenizer=tokenizer,
        loss_fn=loss_fn,
        roles_from=roles_from,
        accumulate=case.get("accumulate"),
        response_template=case.get("response_template"),
    )
    reference = catalogue_reports[name]
    assert found(report) == found(reference)
    assert verdict(report).status == verdict(reference).status


@pytest.mark.parametrize("name", [n for n in NAMES if _scan_cannot(case_of(n)) is None])
def test_scan_route(name, catalogue_reports):
    case = case_of(name)
    report = scan(
        FIXTURES / case["data"],
        tokenizer=FIXTURES / case["model"],
        examples=10,
        options=DataOptions(response_template=case.get("response_template")),
    )
    reference = catalogue_reports[name]
    rows = [(f.check, f.sample, f.positions) for f in reference.findings if f.check != "roles_unknown"]
    assert [(f.check, f.sample, f.positions) for f in report.findings if f.check != "roles_unknown"] == rows
    assert verdict(report).status == verdict(reference).status


@pytest.mark.parametrize("name", [n for n in NAMES if _assert_masking_cannot(case_of(n)) is None])
def test_assert_masking_route(name, catalogue_reports, fixture_model):
    case = case_of(name)
    model, tokenizer = fixture_model(case["model"], case.get("trust_remote_code", False))
    [batch] = load_batches(FIXTURES / case["data"], pad_token_id=tokenizer.pad_token_id)
    kwargs = {
        "tokenizer": tokenizer,
        "accumulate": case.get("accumulate"),
        "response_template": case.get("response_template"),
        "roles_from": FIXTURES / case["roles_from"] if "roles_from" in case else None,
        "loss_fn": load_loss_fn(str(FIXTURES / case["loss"])) if "loss" in case else None,
    }
    reference = catalogue_reports[name]
    if verdict(reference).fails():
        with pytest.raises(AssertionError, match=re.escape(f"({verdict(reference).status})")):
            assert_masking(model, batch, **kwargs)
    else:
        report = assert_masking(model, batch, **kwargs)
        assert found(report) == found(reference) and verdict(report).status == verdict(reference).status
    assert torch.is_grad_enabled()


def _callback_cannot(case: dict) -> str | None:
    keys = _keys(case)
    if not keys:
        return "JSON lines in several batches: a Trainer step is one batch here"
    if case.get("response_template") or case.get("roles_from"):
        return (
            "the callback reads roles from the trainer (inputs, train_dataset, chat template): no response template "
            "or roles_from"
        )
    if case.get("loss") or case.get("accumulate"):
        return "the trainer computes its own loss, one micro-batch per step here"
    if {e["check"] for e in case["expect"]} & STRUCTURAL or any(len(s) != 2 for s in keys.values()):
        return "the structural probes (causal, packing) run in check only: the watched step adds no pass"
    if set(keys) - {"input_ids", "labels", "attention_mask", "completion_mask"}:
        return "packing metadata: the probes that judge it run in check only"
    if case.get("trust_remote_code"):
        return "remote code models are not trained here"
    return None


ROUTES["callback"] = _callback_cannot


@pytest.mark.parametrize("name", [n for n in NAMES if _callback_cannot(case_of(n)) is None])
def test_trainer_callback_route(name, catalogue_reports, tmp_path):
    """The batch as a plain Trainer's one step (its collator returns it): the callback finds what check finds."""
    from transformers import Trainer, TrainingArguments

    from gradscope.integrations import GradscopeCallback
    from gradscope.model.load import load_model, load_tokenizer

    case = case_of(name)
    tokenizer = load_tokenizer(FIXTURES / case["model"])
    [batch] = load_batches(FIXTURES / case["data"], pad_token_id=tokenizer.pad_token_id)
    rows = len(batch["input_ids"])
    callback = GradscopeCallback(fail_on=None, write_report=False)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        per_device_train_batch_size=rows,
        max_steps=1,
        remove_unused_columns=False,
        learning_rate=1e-2,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=load_model(FIXTURES / case["model"]),
        args=args,
        train_dataset=[{"row": i} for i in range(rows)],
        processing_class=tokenizer,
        data_collator=lambda _: {k: v.clone() for k, v in batch.items()},
        callbacks=[callback],
    )
    trainer.train()
    reference = catalogue_reports[name]
    assert found(callback.report) == [f for f in found(reference) if f[0] != "uneven_token_weights"]
    assert verdict(callback.report).status == verdict(reference).status


# ------------------------------------------------------------------------------------------ raw rows

RAW = ("prompt_completion", "chat")
"""Raw-row routes take raw rows, not the catalogue's tensors: the same rows go through the reference pipeline,
``--pipeline trl``, ``--collate`` and, tokenized, ``--roles-from``."""
COLLATORS = FIXTURES / "raw" / "collators.py"


def cli_check(*args: object) -> dict:
    from typer.testing import CliRunner

    from gradscope.cli import app

    result = CliRunner().invoke(
        app,
        [
            "check",
            str(FIXTURES / "models/tiny-llama-chat"),
            *map(str, args),
            "--depth",
            "logits",
            "--batch-size",
            "3",
            "--format",
            "json",
        ],
    )
    assert result.exit_code in (0, 1), result.output
    data = json.loads(result.stdout)
    assert result.exit_code == int(data["summary"]["status"] != "clean")
    return data


def json_found(data: dict) -> tuple[str, list[tuple[str, int | None, list[int]]]]:
    return data["summary"]["status"], [(f["check"], f["sample"], f["positions"]) for f in data["findings"]]


@pytest.mark.parametrize("name", RAW)
def test_raw_rows_routes_agree(name, tmp_path):
    """A correct pipeline is clean on every route; the labels-copy bug is the same prompt_leak on every route."""
    rows = FIXTURES / "raw" / f"{name}.jsonl"
    trl = ["--pipeline", "trl"] + (["--assistant-only-loss"] if name == "chat" else [])
    clean = [
        cli_check(rows),
        cli_check(rows, *trl),
        cli_check(rows, "--collate", f"{COLLATORS}:mask_prompt", "--collate-input", "tokens"),
    ]
    assert [json_found(d) for d in clean] == [("clean", [])] * 3
    leaking = cli_check(rows, "--collate", f"{COLLATORS}:labels_copy_input_ids", "--collate-input", "tokens")
    status, findings = json_found(leaking)
    assert status == "errors" and {f[0] for f in findings} == {"prompt_leak"}
    if name == "chat":  # TRL without assistant_only_loss trains the whole conversation: the same bug
        assert json_found(cli_check(rows, "--pipeline", "trl")) == (status, findings)
    tokens = [[t["token_id"] for t in s["tokens"] if t["role"] != "pad"] for s in leaking["samples"]]
    tokenized = tmp_path / "tokenized.jsonl"
    tokenized.write_text("".join(json.dumps({"input_ids": ids, "labels": ids}) + "\n" for ids in tokens))
    assert json_found(cli_check(tokenized, "--roles-from", rows)) == (status, findings)
