"""Regenerate docs/img/report.png: the HTML report of a leaking fixture batch, screenshotted by headless Chromium.

    python docs/make_screenshot.py                      # gradscope check on fixtures/batches/llama_prompt_leak
    python docs/make_screenshot.py --case gpt2_pad_leak --height 1400

Runs the same check the CLI runs (every probe) on a committed catalogue case, writes the page next to the PNG's
temporary directory and takes a 1280-pixel-wide screenshot of its top.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gradscope  # noqa: E402
from gradscope.load import load_batches, load_model_and_tokenizer  # noqa: E402
from tests.chromium import find_chromium, screenshot  # noqa: E402

FIXTURES = ROOT / "fixtures"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="llama_prompt_leak", help="A case of fixtures/catalogue.json.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "report.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1500)
    args = parser.parse_args()
    binary = find_chromium()
    if binary is None:
        sys.exit("Chromium is not installed: apt-get install -y chromium")
    [case] = [c for c in json.loads((FIXTURES / "catalogue.json").read_text()) if c["name"] == args.case]
    model, tokenizer = load_model_and_tokenizer(FIXTURES / case["model"])
    batches = load_batches(FIXTURES / case["data"], pad_token_id=tokenizer.pad_token_id)
    report = gradscope.check_batches(model, batches, tokenizer=tokenizer, source=case["data"])
    report.model["name_or_path"] = case["model"]  # the page shows the fixture's path, not this machine's
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(report.to_html(), encoding="utf-8")
        screenshot(binary, page, args.out, width=args.width, height=args.height)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
