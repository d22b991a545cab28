"""The seed design document's YAML blocks, kept in this project as test data.

The seed document (piccolo-resource-monitoring-hld.md) lives outside the repository, in
../shared/seed/, which a clone does not have. tests/data/seed/ holds a copy of each of its ```yaml
blocks, one file per block, named by top-level section and position: `section-3-block-1.yaml` is
the first block of `## 3.`. tests/unit/test_seed.py compares the copy with the document wherever
the document is beside the checkout.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SEED_DATA = REPO / "tests" / "data" / "seed"
SHARED_SEED = REPO.parent / "shared" / "seed" / "piccolo-resource-monitoring-hld.md"
_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)
_SECTION = re.compile(r"^## (\d+)\.", re.MULTILINE)
_BLOCK_FILE = re.compile(r"section-(\d+)-block-(\d+)\.yaml")


def seed_blocks(section: int) -> list[str]:
    """The ```yaml blocks of one top-level section (`## N.`) of the seed document, in order."""
    return copied_blocks().get(section, [])


def copied_blocks() -> dict[int, list[str]]:
    """Every block in tests/data/seed/, by section, each section's in order."""
    found: dict[int, list[tuple[int, str]]] = {}
    for path in SEED_DATA.glob("section-*-block-*.yaml"):
        name = _BLOCK_FILE.fullmatch(path.name)
        assert name is not None, f"not a block file name: {path}"
        section, position = int(name.group(1)), int(name.group(2))
        found.setdefault(section, []).append((position, path.read_text(encoding="utf-8")))
    return {section: [text for _, text in sorted(blocks)] for section, blocks in found.items()}


def document_blocks(text: str) -> dict[int, list[str]]:
    """Every ```yaml block of a seed document's text, by the top-level section it is in."""
    starts = [(int(m.group(1)), m.start()) for m in _SECTION.finditer(text)]
    blocks: dict[int, list[str]] = {}
    for index, (section, start) in enumerate(starts):
        end = starts[index + 1][1] if index + 1 < len(starts) else len(text)
        found = [m.group(1) for m in _BLOCK.finditer(text, start, end)]
        if found:
            blocks.setdefault(section, []).extend(found)
    return blocks
