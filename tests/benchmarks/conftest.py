"""What every benchmark shares: the demo's bundle and video, and one way to report.

Benchmarks print ratios of figures measured side by side in the same run on the same
machine, because an absolute number from a shared two-core CI box says little about a
Pi; the ratio of two paths measured together does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO / "deploy" / "demo"
DEMO_BUNDLE = DEMO_DIR / "models" / "shapes.ewm"
DEMO_VIDEO = DEMO_DIR / "samples" / "shapes.mp4"


def report(title: str, lines: Sequence[str], verdict: str) -> None:
    """One block per benchmark in the `make bench` output: what, figures, target."""
    rule = "-" * 78
    body = "\n".join(f"  {line}" for line in lines)
    print(f"\n{rule}\n{title}\n{rule}\n{body}\n  => {verdict}\n{rule}")


@pytest.fixture(scope="session")
def demo_bundle() -> Path:
    if not DEMO_BUNDLE.is_file():
        pytest.fail(f"{DEMO_BUNDLE} is missing; rebuild the demo assets with `make models`")
    return DEMO_BUNDLE


@pytest.fixture(scope="session")
def demo_video() -> Path:
    if not DEMO_VIDEO.is_file():
        pytest.fail(f"{DEMO_VIDEO} is missing; rebuild the demo assets with `make models`")
    return DEMO_VIDEO
