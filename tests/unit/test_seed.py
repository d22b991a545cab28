"""The project's copy of the seed document's YAML blocks (tests/data/seed/) matches the document.

The document is beside a checkout in the shared workspace, not in a clone: elsewhere this is the
one test that skips.
"""

import pytest

from tests.support.seed import SHARED_SEED, copied_blocks, document_blocks


@pytest.mark.skipif(
    not SHARED_SEED.exists(), reason=f"the seed document is not beside this checkout: {SHARED_SEED}"
)
def test_the_copy_holds_every_yaml_block_of_the_seed_document_as_written() -> None:
    seed = document_blocks(SHARED_SEED.read_text(encoding="utf-8"))
    assert seed, f"no yaml blocks found in {SHARED_SEED}"
    assert copied_blocks() == seed
