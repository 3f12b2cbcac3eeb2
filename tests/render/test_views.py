"""The terminal views on a pinned console (100 columns, no terminal): the words a user reads are there, unbroken, and
no line is wider than the console, whatever terminal the tests run in."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console

import gradscope
from gradscope.data.load import load_batches
from gradscope.render import CheckView, GradsView, InspectView, RolesView, ScanView
from gradscope.report import Report
from gradscope.verbs.files import roles_files
from gradscope.verbs.grads import grads

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
LLAMA = "models/tiny-llama-chat"
WIDTH = 100


def rendered(view) -> str:
    """The view as a 100-column console without colours prints it; every line fits."""
    __tracebackhide__ = True
    console = Console(width=WIDTH, file=io.StringIO(), highlight=False)
    console.print(view)
    text = console.file.getvalue()
    too_wide = [line for line in text.splitlines() if cell_len(line) > WIDTH]
    assert too_wide == [], f"{len(too_wide)} line(s) wider than {WIDTH} columns"
    return text


def checked(fixture_model, batch: str) -> gradscope.Report:
    model, tokenizer = fixture_model(LLAMA)
    [loaded] = load_batches(FIXTURES / "batches" / f"{batch}.safetensors", pad_token_id=tokenizer.pad_token_id)
    return gradscope.check(model, loaded, tokenizer=tokenizer)


def test_check_view_names_the_leak_and_the_probes(fixture_model):
    text = rendered(CheckView(checked(fixture_model, "llama_prompt_leak")))
    assert "✗ masking errors: 3 in 3 of 3 sample(s) (prompt_leak ×3)" in text
    assert "Probes" in text and "prompt_leak" in text


def test_findings_are_never_cut_at_80_columns(fixture_model):
    """A pipe or a CI log gets 80 columns: every finding's message reads in full there, its fix included (a long
    word is folded onto the next line, never cut with an ellipsis)."""
    report = checked(fixture_model, "llama_prompt_leak")
    console = Console(width=80, file=io.StringIO(), highlight=False)
    console.print(CheckView(report))
    text = console.file.getvalue()
    assert "…" not in text.split("Findings")[1]
    cells = [line.split("│")[-2] for line in text.split("Findings")[1].splitlines() if line.count("│") > 2]
    shown = "".join("".join(cells).split())
    for finding in report.findings:
        assert "".join(finding.message.split()) in shown
    assert "completion_only_loss=True" in report.findings[0].message


def test_inspect_view_of_one_row(fixture_model):
    report = checked(fixture_model, "llama_pad_leak")
    assert "pad_leak" in rendered(InspectView(report, report.samples[1]))
    clean = checked(fixture_model, "llama_clean")
    assert "✓ no finding for sample 2" in rendered(InspectView(clean, clean.samples[2]))


def test_roles_view_titles_each_row():
    text = rendered(RolesView(roles_files(FIXTURES / LLAMA, FIXTURES / "raw/chat.jsonl"), max_rows=1))
    assert "row 0 (chat): 57 tokens, 18 completion, 2 not judged" in text
    assert "more row(s) not shown (--show N)" in text


def test_grads_view_names_the_untrained_block(fixture_model, fixture_batch):
    model, _ = fixture_model("models/tiny-llama-frozen-block")
    text = rendered(GradsView(grads(model, fixture_batch("llama_clean"))))
    assert "untrained_parameters" in text and "layer 1 attention" in text


def test_scan_view_points_to_inspect():
    report = gradscope.scan(
        FIXTURES / "batches/gpt2_eos_untrained_lm_collator.safetensors", tokenizer=FIXTURES / "models/tiny-gpt2"
    )
    text = rendered(ScanView(report))
    assert "eos_untrained" in text and "gradscope inspect MODEL DATA --row N" in text


@pytest.mark.parametrize(
    "drop, dropped, expected",
    [
        (0.34, False, "the loss does not halve (it fell 34%, it must fall 50%)"),
        (-0.10, False, "the loss does not halve (it rose 10%, it must fall 50%)"),
        (0.62, True, "the loss at least halves (it fell 62%)"),
    ],
)
def test_the_overfit_sentence_states_its_rule(drop, dropped, expected):
    """A loss that fell 34% is not a loss that "does not drop": the rule is that it at least halves."""
    from gradscope.render.grads import OverfitView
    from gradscope.report import OverfitReport

    o = OverfitReport(1, "adamw", 1e-3, [1.0, 1.0 - drop], drop, dropped, 0.5)
    out = io.StringIO()
    Console(file=out, width=200, highlight=False).print(OverfitView(o))
    assert out.getvalue().splitlines()[0].endswith(expected)
    assert expected in Report(model={}, overfit=o).to_html()
