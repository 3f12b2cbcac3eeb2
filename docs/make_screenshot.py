"""Regenerate docs/img/report.png, the README's picture of the HTML report: the browser test's own screenshot of
the leaking fixture batch (llama_prompt_leak) in headless Chromium.

    python docs/make_screenshot.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img" / "report.png"

if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    test = "tests/render/test_browser.py::test_flagged_tokens_are_visible_and_styled_as_flagged"
    env = {**os.environ, "GRADSCOPE_SCREENSHOT": str(OUT), "CI": "true"}  # no Chromium is a failure here
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", test], cwd=ROOT, env=env))
