from __future__ import annotations

import pytest

from agent.config import parse_listen
from agent.serve.api import BadRequest, parse_time

NOW = 1_800_000_000 * 10**9


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("-1h", NOW - 3600 * 10**9),
        ("-1h30m", NOW - 5400 * 10**9),
        ("-90s", NOW - 90 * 10**9),
        ("2026-12-06T10:00:00Z", 1_796_551_200 * 10**9),
        ("2026-12-06T11:00:00.5+01:00", 1_796_551_200 * 10**9 + 500_000_000),
    ],
)
def test_times_are_rfc3339_now_or_relative(text: str, expected: int) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "-1x", "2026-13-01T00:00:00Z", "1h", ""])
def test_other_times_are_refused(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_time(text, NOW)


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:9108").loopback
    assert parse_listen("[::1]:9108").loopback
    assert parse_listen("localhost:9108").loopback
    assert parse_listen("/run/piccolo/api.sock").loopback
    assert parse_listen("unix:/run/piccolo/api.sock").path is not None
    assert not parse_listen("0.0.0.0:9108").loopback
    assert not parse_listen("192.0.2.7:80").loopback
    for bad in ("9108", "host:", "host:0", "host:70000", "unix:relative.sock"):
        with pytest.raises(ValueError, match=r"port|expected|absolute"):
            parse_listen(bad)
