"""Headless Debian chromium for tests of self-contained HTML pages (skipped where it is not installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="Debian chromium not installed (apt-get install chromium)")
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium(page: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["chromium", *_FLAGS, f"--user-data-dir={work / 'profile'}", *args, f"file://{page}"],
                          check=True, capture_output=True, timeout=120)


def screenshot(page: Path, work: Path, size: tuple[int, int] = (1000, 800)) -> np.ndarray:
    """The page as rendered in a ``size`` window, (H, W, 3) int."""
    png = work / "shot.png"
    _chromium(page, work, f"--window-size={size[0]},{size[1]}", f"--screenshot={png}")
    assert png.stat().st_size > 10_000
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def dom(page: Path, work: Path) -> str:
    """The DOM after the page's scripts ran."""
    return _chromium(page, work, "--dump-dom", "--virtual-time-budget=2000").stdout.decode()
