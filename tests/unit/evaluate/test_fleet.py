"""What the elected agent reads back from other agents' records never stops it."""

from __future__ import annotations

import pytest

from agent.evaluate.fleet import _state_of


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        (None, None),
        (b'{"state":"Running","since":"x"}', "Running"),
        (b"not json", None),
        (b"\xff\xfe", None),
        (b"[1, 2]", None),
        (b'{"state": 3}', None),
        (b"{}", None),
    ],
)
def test_a_damaged_state_record_reads_as_no_state(raw: bytes | None, state: str | None) -> None:
    assert _state_of(raw) == state
