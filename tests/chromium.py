"""Headless Chromium for the browser test and the screenshot script: a fresh profile per call, nothing fetched."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--allow-file-access-from-files",
)

PROBE_MARK = "<!-- gradscope browser probe -->"


def find_chromium() -> str | None:
    """The Chromium binary: $CHROMIUM, else Debian's /usr/bin/chromium, else one on PATH."""
    for name in (os.environ.get("CHROMIUM"), *CANDIDATES):
        if name and (path := shutil.which(name)):
            return path
    return None


def run_chromium(binary: str, page: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Chromium on ``page`` with a fresh user-data directory; raises on a non-zero exit."""
    with tempfile.TemporaryDirectory(prefix="gradscope-chromium-") as profile:
        command = [binary, *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited {result.returncode}: {result.stderr[-2000:]}")
    return result


def screenshot(binary: str, page: Path, out: Path, width: int = 1280, height: int = 1600) -> Path:
    """A PNG of the page's first ``height`` pixels at ``width``."""
    run_chromium(binary, page, f"--screenshot={out.resolve()}", f"--window-size={width},{height}")
    return out


def dump_dom(binary: str, page: Path, width: int = 1280, height: int = 1600) -> str:
    """The DOM after the page's scripts ran (and after a probe script appended to it, see ``with_probe``)."""
    return run_chromium(binary, page, "--dump-dom", f"--window-size={width},{height}").stdout


def with_probe(page_html: str, script: str) -> str:
    """The page with a script appended after its own, which runs once they have."""
    return page_html.replace("</body>", f"{PROBE_MARK}<script>{script}</script>\n</body>", 1)
