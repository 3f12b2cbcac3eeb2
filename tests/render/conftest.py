"""Headless Chromium for the browser tests: a fresh profile per call, nothing fetched.

Never a silent skip in CI: without Chromium the ``chromium`` fixture fails when $CI is set (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--allow-file-access-from-files",
)

PROBE_MARK = "<!-- gradscope browser probe -->"


class Chromium:
    """One Chromium binary, run headless on a page file."""

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def run(self, page: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """Chromium on ``page`` with a fresh user-data directory; raises on a non-zero exit."""
        with tempfile.TemporaryDirectory(prefix="gradscope-chromium-") as profile:
            command = [self.binary, *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"chromium exited {result.returncode}: {result.stderr[-2000:]}")
        return result

    def screenshot(self, page: Path, out: Path, width: int = 1280, height: int = 1600) -> Path:
        """A PNG of the page's first ``height`` pixels at ``width``."""
        self.run(page, f"--screenshot={out.resolve()}", f"--window-size={width},{height}")
        return out

    def dump_dom(self, page: Path, width: int = 1280, height: int = 1600) -> str:
        """The DOM after the page's scripts ran (and after a probe script appended to it, see ``with_probe``)."""
        return self.run(page, "--dump-dom", f"--window-size={width},{height}").stdout

    @staticmethod
    def with_probe(page_html: str, script: str) -> str:
        """The page with a script appended after its own, which runs once they have."""
        return page_html.replace("</body>", f"{PROBE_MARK}<script>{script}</script>\n</body>", 1)


def find_chromium() -> str | None:
    """The Chromium binary: $CHROMIUM, else Debian's /usr/bin/chromium, else one on PATH."""
    for name in (os.environ.get("CHROMIUM"), *CANDIDATES):
        if name and (path := shutil.which(name)):
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> Chromium:
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed and CI is set: apt-get install -y chromium (.ci/run does)")
        pytest.skip("Chromium is not installed (apt-get install chromium); in CI this test fails instead")
    return Chromium(binary)
