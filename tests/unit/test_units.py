from __future__ import annotations

import pytest

from agent.units import parse_duration, parse_percent, parse_quantity, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("1h30m", 5400.0),
        ("250us", 250e-6),
        ("1.5s", 1.5),
        (" 2 m ", 120.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10 parsecs", "10", "", "s", "10sec", "-1s", "1e3s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [10, 1.5, True, None])
def test_bare_numbers_are_not_durations(value: object) -> None:
    with pytest.raises(ValueError, match="with a unit"):
        parse_duration(value)


def test_percent_and_size() -> None:
    assert parse_percent("80%") == 80.0
    assert parse_percent("0.5 %") == 0.5
    assert parse_size("64MiB") == 64 * 2**20
    assert parse_size("1GB") == 10**9
    assert parse_size(4096) == 4096
    with pytest.raises(ValueError, match="size"):
        parse_size("64 parsecs")
    with pytest.raises(ValueError, match="percentage"):
        parse_percent("80")


def test_quantity_keeps_the_unit() -> None:
    assert str(parse_quantity("500ms")) == "0.5s"
    assert str(parse_quantity("5%")) == "5%"
    assert str(parse_quantity(3)) == "3"
    with pytest.raises(ValueError, match="duration"):
        parse_quantity("fast")
