"""The seed design document and its YAML blocks, as the tests read them."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SEED = REPO.parent / "shared" / "seed" / "piccolo-resource-monitoring-hld.md"
_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)
_SECTION = re.compile(r"^## (\d+)\.", re.MULTILINE)


def seed_text() -> str:
    if not SEED.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"the seed document is missing at {SEED}")
        pytest.skip(f"the seed document is not beside this checkout ({SEED})")
    return SEED.read_text(encoding="utf-8")


def seed_blocks(section: int) -> list[str]:
    """The ```yaml blocks of one top-level section (`## N.`) of the seed document."""
    text = seed_text()
    starts = [(int(m.group(1)), m.start()) for m in _SECTION.finditer(text)]
    blocks: list[str] = []
    for index, (number, start) in enumerate(starts):
        if number != section:
            continue
        end = starts[index + 1][1] if index + 1 < len(starts) else len(text)
        blocks += [m.group(1) for m in _BLOCK.finditer(text, start, end)]
    return blocks
