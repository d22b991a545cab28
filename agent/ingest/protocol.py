"""The ingest wire format (docs/ingest-protocol.md): one JSON object per datagram, version 1.

`parse(data, max_bytes)` returns one of the frozen report types or raises `Malformed` whose
`reason` is one of `MALFORMED_REASONS`. Validation is by hand after a single `json.loads`, because
this runs for every datagram. Measured with timeit on the development machine (a 2-core VM shared
with other jobs, Python 3.11): an `activation` message (155 bytes) parses in 6.4-7.3 µs, of
which `json.loads` alone takes 3-4 µs and building the frozen dataclass about 1.1 µs; a
`heartbeat` in about 4.3 µs; a `not_json` datagram is refused in 6-8 µs (json's exception is
the expensive part).

Rules that every message type shares:
- `"v"` must be the integer 1 (a missing or different version is `bad_version`);
- fields not named here are ignored, so a newer sender can add fields without breaking us;
- times are CLOCK_MONOTONIC nanoseconds, integers in [0, 2**63); `seq` is an integer in the
  same range; booleans are not integers here, although Python treats them as such;
- `model` and `id` follow the resource id rule (`agent.model.RESOURCE_ID_PATTERN`); task,
  checkpoint and state names follow the same rule with at most 128 characters.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from agent.model import RESOURCE_ID_PATTERN, ResourceType

VERSION: Final = 1

MalformedReason = Literal[
    "too_large",
    "not_utf8",
    "not_json",
    "not_object",
    "bad_version",
    "unknown_type",
    "missing_field",
    "bad_field",
]
MALFORMED_REASONS: Final[tuple[MalformedReason, ...]] = (
    "too_large",
    "not_utf8",
    "not_json",
    "not_object",
    "bad_version",
    "unknown_type",
    "missing_field",
    "bad_field",
)


WALL_CLOCK_AHEAD_NS: Final = 86_400 * 1_000_000_000
"""A report time more than this ahead of the receiver's CLOCK_MONOTONIC is a wall-clock time
(`date +%s%N`): refused (drop reason `wall_clock_time`), never turned into a date in etcd."""


def wall_clock(report: object, monotonic_now_ns: int) -> bool:
    """Whether a timing report carries a time far ahead of CLOCK_MONOTONIC now."""
    limit = monotonic_now_ns + WALL_CLOCK_AHEAD_NS
    for name in ("ts_ns", "start_ns", "end_ns"):
        value = getattr(report, name, None)
        if value is not None and value > limit:
            return True
    return False


class Refused(Exception):  # noqa: N818 - named for the condition
    """A valid report the pipeline does not take; `reason` names its drop counter."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


APP_METRICS: Final = frozenset(
    {"inference_time", "throughput", "latency", "accuracy", "response_time"}
)
"""The application metrics of a model (seed 7.3) that only the application itself can measure."""

SCENARIO_RESULTS: Final = frozenset({"success", "failure"})
STATE_RESOURCE_TYPES: Final = {
    t.value: t for t in (ResourceType.SCENARIO, ResourceType.PACKAGE, ResourceType.MODEL)
}

NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""Task, checkpoint and state names: the resource id rule, at most 128 characters."""

MAX_UNIT_CHARS: Final = 32
MAX_REASON_CHARS: Final = 1024
_TIME_LIMIT: Final = 1 << 63


class Malformed(ValueError):  # noqa: N818 - named for the condition
    """A datagram that is not a valid report; `reason` names the drop counter it belongs to."""

    def __init__(self, reason: MalformedReason, field: str = "") -> None:
        self.reason: MalformedReason = reason
        self.field = field
        super().__init__(f"{reason}: {field}" if field else reason)


@dataclass(frozen=True, slots=True)
class Start:
    """Activation `seq` of `task` in `model` began at `ts_ns` (released at `release_ns`)."""

    model: str
    task: str
    seq: int
    ts_ns: int
    release_ns: int | None = None
    """When the activation was due; absent when the task does not know (no latency then)."""


@dataclass(frozen=True, slots=True)
class End:
    """Activation `seq` of `task` in `model`, announced by a `Start`, finished at `ts_ns`."""

    model: str
    task: str
    seq: int
    ts_ns: int


@dataclass(frozen=True, slots=True)
class Activation:
    """A whole activation in one report; `release_ns <= start_ns <= end_ns` holds."""

    model: str
    task: str
    seq: int
    start_ns: int
    end_ns: int
    release_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    model: str
    task: str
    ts_ns: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """`task` reached `checkpoint` (for logical supervision of its checkpoint graph)."""

    model: str
    task: str
    checkpoint: str
    ts_ns: int


@dataclass(frozen=True, slots=True)
class AppMetric:
    """A value measured by the application; `name` is one of `APP_METRICS`; finite."""

    model: str
    name: str
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class ScenarioExecution:
    """The orchestrator ran `scenario` once; `duration_ms` is finite and not negative."""

    scenario: str
    duration_ms: float
    result: Literal["success", "failure"]


@dataclass(frozen=True, slots=True)
class StateReport:
    """The orchestrator's view of a resource's state (e.g. a scenario became Active)."""

    resource_type: ResourceType
    """scenario, package or model: never node."""
    id: str
    state: str
    reason: str = ""


Report = (
    Start | End | Activation | Heartbeat | Checkpoint | AppMetric | ScenarioExecution | StateReport
)


# Strings already known to be valid: the same few model, task and checkpoint names arrive over
# and over, and a set lookup is several times cheaper than the regular expression. Bounded, so a
# sender spraying distinct names cannot grow it without limit.
_CACHE_LIMIT: Final = 4096
_valid_ids: set[str] = set()
_valid_names: set[str] = set()


# The helpers below repeat the KeyError handling instead of sharing a `_required` helper: this
# runs for every field of every datagram, and a Python call costs about as much as the check.


def _required(obj: dict[str, object], key: str) -> object:
    try:
        return obj[key]
    except KeyError:
        raise Malformed("missing_field", key) from None


def _id(obj: dict[str, object], key: str) -> str:
    try:
        value = obj[key]
    except KeyError:
        raise Malformed("missing_field", key) from None
    if type(value) is not str:
        raise Malformed("bad_field", key)
    if value not in _valid_ids:
        if RESOURCE_ID_PATTERN.fullmatch(value) is None:
            raise Malformed("bad_field", key)
        if len(_valid_ids) >= _CACHE_LIMIT:
            _valid_ids.clear()
        _valid_ids.add(value)
    return value


def _name(obj: dict[str, object], key: str) -> str:
    try:
        value = obj[key]
    except KeyError:
        raise Malformed("missing_field", key) from None
    if type(value) is not str:
        raise Malformed("bad_field", key)
    if value not in _valid_names:
        if NAME_PATTERN.fullmatch(value) is None:
            raise Malformed("bad_field", key)
        if len(_valid_names) >= _CACHE_LIMIT:
            _valid_names.clear()
        _valid_names.add(value)
    return value


def _choice(obj: dict[str, object], key: str, choices: frozenset[str]) -> str:
    value = _required(obj, key)
    # The type check first: a list or an object is unhashable and cannot be looked up.
    if type(value) is not str or value not in choices:
        raise Malformed("bad_field", key)
    return value


def _time(obj: dict[str, object], key: str) -> int:
    try:
        value = obj[key]
    except KeyError:
        raise Malformed("missing_field", key) from None
    # `type(...) is int` rejects bool, which json gives for true/false.
    if type(value) is not int or not 0 <= value < _TIME_LIMIT:
        raise Malformed("bad_field", key)
    return value


def _release(obj: dict[str, object], start: int) -> int | None:
    """The optional `release_ns`, which cannot lie after the activation's start."""
    value = obj.get("release_ns")
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= start:
        raise Malformed("bad_field", "release_ns")
    return value


FLOAT_MAX = sys.float_info.max


def _number(obj: dict[str, object], key: str) -> float:
    value = _required(obj, key)
    kind = type(value)
    if kind is float:
        # json.loads accepts NaN and Infinity; neither is a measurement.
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise Malformed("bad_field", key)
        return value  # type: ignore[return-value]
    # An integer beyond the float range (1e309 and more) is no measurement either, and would
    # overflow the first float arithmetic it met.
    if kind is not int or not -FLOAT_MAX <= value <= FLOAT_MAX:  # type: ignore[operator]
        raise Malformed("bad_field", key)
    return value  # type: ignore[return-value]


def _text(value: object, key: str, limit: int) -> str:
    if type(value) is not str or len(value) > limit:
        raise Malformed("bad_field", key)
    if not value.isascii():
        # A JSON escape can smuggle in a lone surrogate ("\ud800"), which no UTF-8 encoder
        # downstream (buffer, etcd, MQTT) would accept.
        try:
            value.encode()
        except UnicodeEncodeError:
            raise Malformed("bad_field", key) from None
    return value


def _start(obj: dict[str, object]) -> Start:
    ts = _time(obj, "ts_ns")
    return Start(
        _id(obj, "model"),
        _name(obj, "task"),
        _time(obj, "seq"),
        ts,
        _release(obj, ts),
    )


def _end(obj: dict[str, object]) -> End:
    return End(_id(obj, "model"), _name(obj, "task"), _time(obj, "seq"), _time(obj, "ts_ns"))


def _activation(obj: dict[str, object]) -> Activation:
    start = _time(obj, "start_ns")
    end = _time(obj, "end_ns")
    if end < start:
        raise Malformed("bad_field", "end_ns")
    return Activation(
        _id(obj, "model"),
        _name(obj, "task"),
        _time(obj, "seq"),
        start,
        end,
        _release(obj, start),
    )


def _heartbeat(obj: dict[str, object]) -> Heartbeat:
    return Heartbeat(_id(obj, "model"), _name(obj, "task"), _time(obj, "ts_ns"))


def _checkpoint(obj: dict[str, object]) -> Checkpoint:
    return Checkpoint(
        _id(obj, "model"), _name(obj, "task"), _name(obj, "checkpoint"), _time(obj, "ts_ns")
    )


def _metric(obj: dict[str, object]) -> AppMetric:
    return AppMetric(
        _id(obj, "model"),
        _choice(obj, "name", APP_METRICS),
        _number(obj, "value"),
        _text(_required(obj, "unit"), "unit", MAX_UNIT_CHARS),
    )


def _scenario(obj: dict[str, object]) -> ScenarioExecution:
    scenario = _id(obj, "scenario")
    duration = _number(obj, "duration_ms")
    if duration < 0:
        raise Malformed("bad_field", "duration_ms")
    result: Literal["success", "failure"] = _choice(obj, "result", SCENARIO_RESULTS)  # type: ignore[assignment]
    return ScenarioExecution(scenario, duration, result)


def _state(obj: dict[str, object]) -> StateReport:
    kind = _required(obj, "resource_type")
    resource_type = STATE_RESOURCE_TYPES.get(kind) if type(kind) is str else None
    if resource_type is None:
        raise Malformed("bad_field", "resource_type")
    reason = obj.get("reason")
    return StateReport(
        resource_type,
        _id(obj, "id"),
        _name(obj, "state"),
        "" if reason is None else _text(reason, "reason", MAX_REASON_CHARS),
    )


_BUILDERS: Final[dict[str, Callable[[dict[str, object]], Report]]] = {
    "start": _start,
    "end": _end,
    "activation": _activation,
    "heartbeat": _heartbeat,
    "checkpoint": _checkpoint,
    "metric": _metric,
    "scenario": _scenario,
    "state": _state,
}
TYPES: Final = frozenset(_BUILDERS)

_loads = json.loads


def parse(data: bytes, max_bytes: int) -> Report:
    """The report in one datagram; raises `Malformed` (and nothing else) for anything invalid.

    Checks run in the order of `MALFORMED_REASONS`, so a datagram that is wrong in several ways
    is counted under the first of them.
    """
    if len(data) > max_bytes:
        raise Malformed("too_large")
    try:
        # Strictly UTF-8: json.loads(bytes) would also guess UTF-16 and UTF-32.
        text = data.decode()
    except UnicodeDecodeError:
        raise Malformed("not_utf8") from None
    try:
        obj = _loads(text)
    except (ValueError, RecursionError):
        # RecursionError: deeply nested arrays; ValueError also covers integers beyond
        # sys.get_int_max_str_digits().
        raise Malformed("not_json") from None
    if type(obj) is not dict:
        raise Malformed("not_object")
    version = obj.get("v")
    if version != VERSION or type(version) is not int:
        raise Malformed("bad_version")
    kind = obj.get("type")
    if kind is None:
        raise Malformed("missing_field", "type")
    build = _BUILDERS.get(kind) if type(kind) is str else None
    if build is None:
        raise Malformed("unknown_type")
    return build(obj)


__all__ = [
    "APP_METRICS",
    "MALFORMED_REASONS",
    "TYPES",
    "VERSION",
    "WALL_CLOCK_AHEAD_NS",
    "Activation",
    "AppMetric",
    "Checkpoint",
    "End",
    "Heartbeat",
    "Malformed",
    "MalformedReason",
    "Refused",
    "Report",
    "ScenarioExecution",
    "Start",
    "StateReport",
    "parse",
]
