"""The wire format of docs/ingest-protocol.md: every report type, every drop reason, and noise."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from agent.ingest import protocol
from agent.ingest.protocol import (
    MALFORMED_REASONS,
    Activation,
    AppMetric,
    Checkpoint,
    End,
    Heartbeat,
    Malformed,
    Report,
    ScenarioExecution,
    Start,
    StateReport,
    parse,
)
from agent.model import ResourceType

MAX = 4096
T = 1_000_000_000_000


def encode(message: dict[str, object]) -> bytes:
    return json.dumps(message).encode()


def reason_of(data: bytes, max_bytes: int = MAX) -> str:
    with pytest.raises(Malformed) as caught:
        parse(data, max_bytes)
    return caught.value.reason


MINIMAL: dict[str, dict[str, object]] = {
    "start": {"model": "vision-system", "task": "detect", "seq": 4, "ts_ns": T},
    "end": {"model": "vision-system", "task": "detect", "seq": 4, "ts_ns": T + 5},
    "activation": {
        "model": "vision-system",
        "task": "detect",
        "seq": 5,
        "start_ns": T,
        "end_ns": T + 9,
    },
    "heartbeat": {"model": "vision-system", "task": "detect", "ts_ns": T},
    "checkpoint": {"model": "vision-system", "task": "detect", "checkpoint": "pre", "ts_ns": T},
    "metric": {"model": "vision-system", "name": "inference_time", "value": 12.5, "unit": "ms"},
    "scenario": {"scenario": "adas-activation", "duration_ms": 230, "result": "success"},
    "state": {"resource_type": "scenario", "id": "adas-activation", "state": "Active"},
}


VALID: list[tuple[dict[str, object], Report | None]] = [
    ({"type": "start", **MINIMAL["start"]}, Start("vision-system", "detect", 4, T)),
    (
        {"type": "start", **MINIMAL["start"], "release_ns": T - 7},
        Start("vision-system", "detect", 4, T, T - 7),
    ),
    (
        {"type": "start", **MINIMAL["start"], "release_ns": None},
        Start("vision-system", "detect", 4, T, None),
    ),
    ({"type": "end", **MINIMAL["end"]}, End("vision-system", "detect", 4, T + 5)),
    (
        {"type": "activation", **MINIMAL["activation"]},
        Activation("vision-system", "detect", 5, T, T + 9),
    ),
    (
        {"type": "activation", **MINIMAL["activation"], "release_ns": T},
        Activation("vision-system", "detect", 5, T, T + 9, T),
    ),
    ({"type": "heartbeat", **MINIMAL["heartbeat"]}, Heartbeat("vision-system", "detect", T)),
    (
        {"type": "checkpoint", **MINIMAL["checkpoint"]},
        Checkpoint("vision-system", "detect", "pre", T),
    ),
    (
        {"type": "metric", **MINIMAL["metric"]},
        AppMetric("vision-system", "inference_time", 12.5, "ms"),
    ),
    (
        {"type": "metric", "model": "m", "name": "throughput", "value": 30, "unit": "1/s"},
        AppMetric("m", "throughput", 30, "1/s"),
    ),
    (
        {"type": "scenario", **MINIMAL["scenario"]},
        ScenarioExecution("adas-activation", 230, "success"),
    ),
    (
        {"type": "scenario", "scenario": "s", "duration_ms": 0.5, "result": "failure"},
        ScenarioExecution("s", 0.5, "failure"),
    ),
    (
        {"type": "state", **MINIMAL["state"]},
        StateReport(ResourceType.SCENARIO, "adas-activation", "Active", ""),
    ),
    (
        {"type": "state", "resource_type": "model", "id": "m", "state": "Failed", "reason": "OOM"},
        StateReport(ResourceType.MODEL, "m", "Failed", "OOM"),
    ),
    (
        {"type": "state", "resource_type": "model", "id": "m", "state": "Failed", "reason": "ü 😀"},
        StateReport(ResourceType.MODEL, "m", "Failed", "ü 😀"),
    ),
    (
        {"type": "state", "resource_type": "package", "id": "p", "state": "Ready", "reason": None},
        StateReport(ResourceType.PACKAGE, "p", "Ready", ""),
    ),
    # Boundaries of the name rules and ranges.
    ({"type": "heartbeat", "model": "a" * 253, "task": "b" * 128, "ts_ns": 0}, None),
    ({"type": "heartbeat", "model": "0._-", "task": "Z", "ts_ns": (1 << 63) - 1}, None),
    ({"type": "activation", **MINIMAL["activation"], "end_ns": T}, None),
]


@pytest.mark.parametrize(("message", "expected"), VALID)
def test_valid_reports_parse_to_their_value(
    message: dict[str, object], expected: Report | None
) -> None:
    report = parse(encode({"v": 1, **message}), MAX)
    if expected is not None:
        assert report == expected
        assert type(report) is type(expected)


def test_unknown_fields_and_whitespace_are_accepted() -> None:
    data = b' \n{"v": 1, "type": "heartbeat", "model": "m", "task": "t", "ts_ns": 3,\n'
    data += b' "future": {"nested": [1, 2]}, "host": "x"}\n '
    assert parse(data, MAX) == Heartbeat("m", "t", 3)


def test_reports_are_frozen() -> None:
    report = parse(encode({"v": 1, "type": "heartbeat", **MINIMAL["heartbeat"]}), MAX)
    assert isinstance(report, Heartbeat)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.task = "other"  # type: ignore[misc]


def test_exactly_max_bytes_is_accepted_and_one_more_is_too_large() -> None:
    message = encode({"v": 1, "type": "heartbeat", **MINIMAL["heartbeat"]})
    padded = message[:-1] + b" " * (MAX - len(message)) + b"}"
    assert len(padded) == MAX
    assert isinstance(parse(padded, MAX), Heartbeat)
    assert reason_of(padded + b" ") == "too_large"


DROPS: list[tuple[bytes, str]] = [
    (b"x" * (MAX + 1), "too_large"),
    (b"\xff", "not_utf8"),
    (b'{"v":1,"type":"heartbeat","model":"m\xc3","task":"t","ts_ns":1}', "not_utf8"),
    ('{"v":1}'.encode("utf-16"), "not_utf8"),
    (b"\xed\xa0\x80", "not_utf8"),  # an encoded surrogate is not UTF-8
    (b"", "not_json"),
    (b"   ", "not_json"),
    (b"{", "not_json"),
    (b'{"v":1,"type":"heartbeat"', "not_json"),
    (b'{"v":1}{"v":1}', "not_json"),
    (b"{'v':1}", "not_json"),
    (b"[" * 2000 + b"]" * 2000, "not_json"),  # nested beyond the recursion limit
    (b"nan", "not_json"),
    (b"[]", "not_object"),
    (b'"text"', "not_object"),
    (b"3", "not_object"),
    (b"null", "not_object"),
    (b"NaN", "not_object"),
    (b'{"type":"heartbeat"}', "bad_version"),
    (b'{"v":2,"type":"heartbeat"}', "bad_version"),
    (b'{"v":"1","type":"heartbeat"}', "bad_version"),
    (b'{"v":1.0,"type":"heartbeat"}', "bad_version"),
    (b'{"v":true,"type":"heartbeat"}', "bad_version"),
    (b'{"v":null,"type":"heartbeat"}', "bad_version"),
    (b'{"v":1,"type":"nope"}', "unknown_type"),
    (b'{"v":1,"type":"Heartbeat"}', "unknown_type"),
    (b'{"v":1,"type":3}', "unknown_type"),
    (b'{"v":1,"type":["heartbeat"]}', "unknown_type"),
    (b'{"v":1,"type":{"a":1}}', "unknown_type"),
    (b'{"v":1}', "missing_field"),
    (b'{"v":1,"type":null}', "missing_field"),
]


@pytest.mark.parametrize(("data", "reason"), DROPS)
def test_each_malformed_datagram_is_named_by_its_reason(data: bytes, reason: str) -> None:
    assert reason_of(data) == reason


def test_integers_beyond_the_digit_limit_are_not_json() -> None:
    data = b'{"v":1,"type":"heartbeat","model":"m","task":"t","ts_ns":' + b"9" * 5000 + b"}"
    assert reason_of(data, 10_000) == "not_json"


REQUIRED = [(kind, key) for kind, fields in MINIMAL.items() for key in fields]


@pytest.mark.parametrize(("kind", "key"), REQUIRED)
def test_each_required_field_missing_is_missing_field(kind: str, key: str) -> None:
    message: dict[str, object] = {"v": 1, "type": kind, **MINIMAL[kind]}
    del message[key]
    with pytest.raises(Malformed) as caught:
        parse(encode(message), MAX)
    assert (caught.value.reason, caught.value.field) == ("missing_field", key)


BAD_FIELDS: list[tuple[str, str, object]] = [
    ("heartbeat", "model", "a/b"),
    ("heartbeat", "model", ""),
    ("heartbeat", "model", "-leading"),
    ("heartbeat", "model", "a" * 254),
    ("heartbeat", "model", "ümlaut"),
    ("heartbeat", "model", "a\n"),
    ("heartbeat", "model", 3),
    ("heartbeat", "model", ["m"]),
    ("heartbeat", "model", None),
    ("heartbeat", "task", "b" * 129),
    ("heartbeat", "task", "with space"),
    ("heartbeat", "task", {"x": 1}),
    ("heartbeat", "ts_ns", -1),
    ("heartbeat", "ts_ns", 1 << 63),
    ("heartbeat", "ts_ns", 1.0),
    ("heartbeat", "ts_ns", 1e9),
    ("heartbeat", "ts_ns", "1"),
    ("heartbeat", "ts_ns", True),
    ("heartbeat", "ts_ns", None),
    ("start", "seq", -1),
    ("start", "seq", False),
    ("start", "release_ns", T + 1),
    ("start", "release_ns", "early"),
    ("end", "seq", 2.5),
    ("activation", "end_ns", T - 1),
    ("activation", "release_ns", T + 1),
    ("activation", "start_ns", [T]),
    ("checkpoint", "checkpoint", "a.b/c"),
    ("checkpoint", "checkpoint", 7),
    ("metric", "name", "memory_usage"),
    ("metric", "name", ["latency"]),
    ("metric", "value", "12.5"),
    ("metric", "value", True),
    ("metric", "value", None),
    ("metric", "value", float("nan")),
    ("metric", "value", float("inf")),
    ("metric", "unit", 3),
    ("metric", "unit", "u" * 33),
    ("scenario", "scenario", "a b"),
    ("scenario", "duration_ms", -0.1),
    ("scenario", "duration_ms", "230"),
    ("scenario", "result", "ok"),
    ("scenario", "result", {"success": True}),
    ("state", "resource_type", "node"),
    ("state", "resource_type", ["model"]),
    ("state", "id", "x/y"),
    ("state", "state", "Not Running"),
    ("state", "reason", 3),
    ("state", "reason", "r" * 1025),
    ("state", "reason", "lone \ud800 surrogate"),
    ("metric", "unit", "\udfff"),
]


@pytest.mark.parametrize(("kind", "key", "value"), BAD_FIELDS)
def test_each_wrong_field_is_bad_field(kind: str, key: str, value: object) -> None:
    message: dict[str, object] = {"v": 1, "type": kind, **MINIMAL[kind], key: value}
    with pytest.raises(Malformed) as caught:
        parse(encode(message), MAX)
    assert (caught.value.reason, caught.value.field) == ("bad_field", key)


def test_a_datagram_with_several_faults_counts_under_the_first_check() -> None:
    assert reason_of(b'{"v":2,"type":"nope"}') == "bad_version"
    assert reason_of(b'{"v":1,"type":"nope","model":"a/b"}') == "unknown_type"
    assert reason_of(b"[" + b" " * MAX + b"]") == "too_large"


def _valid_messages() -> list[bytes]:
    return [encode({"v": 1, "type": kind, **fields}) for kind, fields in MINIMAL.items()]


def test_random_bytes_and_mutated_reports_only_ever_give_a_report_or_malformed() -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible noise, not secrets
    valid = _valid_messages()
    seen: dict[str, int] = {}
    for i in range(20_000):
        if i % 2:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        else:
            mutated = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 4)):
                if not mutated:
                    break
                where = rng.randrange(len(mutated))
                what = rng.random()
                if what < 0.4:
                    mutated[where] = rng.randrange(256)
                elif what < 0.7:
                    del mutated[where:]
                else:
                    mutated.insert(where, rng.choice(b'{}[]",:0123456789-.eE \\'))
            data = bytes(mutated)
        try:
            report = parse(data, MAX)
        except Malformed as exc:
            seen[exc.reason] = seen.get(exc.reason, 0) + 1
        else:
            assert isinstance(report, Report)
            seen["ok"] = seen.get("ok", 0) + 1
    assert set(seen) - {"ok"} <= set(MALFORMED_REASONS)
    # The mutations reach deep into the checks, not only the JSON parser.
    assert {"not_utf8", "not_json", "bad_field", "ok"} <= set(seen)


def test_the_cache_of_valid_names_is_bounded() -> None:
    for i in range(protocol._CACHE_LIMIT + 10):
        parse(encode({"v": 1, "type": "heartbeat", "model": f"m{i}", "task": "t", "ts_ns": 1}), MAX)
    assert len(protocol._valid_ids) <= protocol._CACHE_LIMIT
    # An id that was valid is still checked on every parse after the cache forgot it.
    assert (
        reason_of(encode({"v": 1, "type": "heartbeat", "model": "m/0", "task": "t", "ts_ns": 1}))
        == "bad_field"
    )


@pytest.mark.parametrize(
    ("kind", "key"), [("metric", "value"), ("scenario", "duration_ms")], ids=str
)
@pytest.mark.parametrize("literal", [b"1" + b"0" * 309, b"-" + b"9" * 400, b"10" * 200])
def test_integers_beyond_the_float_range_are_bad_field(kind: str, key: str, literal: bytes) -> None:
    message = {"v": 1, "type": kind, **MINIMAL[kind], key: 0}
    data = encode(message).replace(f'"{key}": 0'.encode(), f'"{key}": '.encode() + literal)
    assert reason_of(data) == "bad_field"


def test_the_largest_finite_values_are_still_measurements() -> None:
    message = {"v": 1, "type": "metric", **MINIMAL["metric"], "value": 1.7e308}
    report = parse(encode(message), MAX)
    assert report.value == 1.7e308  # type: ignore[union-attr]
