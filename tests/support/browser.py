"""A real headless browser for page tests: Debian's chromium, installed by `make test` where it
can be (root and apt-get); tests skip with the reason where it is missing."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_or_skip() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium here: `make test` installs it as root with apt-get (apt-get install chromium)")


def rendered_dom(browser: str, url: str, *, budget_ms: int = 20000) -> str:
    """The DOM after the page's scripts ran, with every host but 127.0.0.1 unresolvable: a page that
    needs a CDN renders here as it would offline."""
    with tempfile.TemporaryDirectory(prefix="dukat-chromium-") as profile:
        result = subprocess.run(
            [
                browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--no-first-run", f"--user-data-dir={profile}",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--virtual-time-budget={budget_ms}", "--dump-dom", url,
            ],
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout
