"""The etcd key layout (ARCHITECTURE.md, "etcd layout") and the records that carry it.

Keys are relative to `data_storage.data_organization.prefix`; values are compact JSON with a
`schema` version. Timestamps in keys are fixed-width UTC RFC 3339 with nine fraction digits, so key
order is time order. Keys are deterministic: a record's key is made once, when the record is made,
and a replayed batch overwrites what it already wrote instead of duplicating it.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import time
from collections.abc import Mapping
from typing import Literal

from agent.clock import rfc3339
from agent.model import (
    EVENT_SEVERITY,
    RESOURCE_ID_PATTERN,
    Record,
    ResourceType,
    Severity,
    Value,
    check_name,
)

SCHEMA = 1
KEY_CACHE_LIMIT = 65536
"""Metric keys remembered per agent: every model's metrics, bounded against a runaway sender."""


def _json_value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else json.dumps(str(value))
    return json.dumps(value)


@functools.lru_cache(maxsize=256)
def _unit_json(unit: str) -> str:
    return json.dumps(unit)


def _dumps(document: Mapping[str, object]) -> bytes:
    """Strict JSON: a non-finite float anywhere is a ValueError, never `Infinity` in etcd."""
    return json.dumps(
        {"schema": SCHEMA, **document}, separators=(",", ":"), allow_nan=False
    ).encode()


def resource_key(resource_type: ResourceType | str, resource_id: str) -> str:
    if not RESOURCE_ID_PATTERN.fullmatch(resource_id):
        raise ValueError(f"invalid resource id {resource_id!r}: it is never written to etcd")
    return f"{ResourceType(resource_type).value}/{resource_id}"


class KeyMaker:
    """Makes the records of one node; owns the per-agent sequence that makes append keys unique."""

    def __init__(self, node: str) -> None:
        self.node = check_name("node", node)
        self._node_json = json.dumps(self.node)
        self._metric_keys: dict[tuple[ResourceType, str, str], str] = {}
        self._seq = itertools.count()

    def _suffix(self, ts_ns: int) -> str:
        return f"{rfc3339(ts_ns)}-{self.node}-{next(self._seq)}"

    def metric(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        name: str,
        value: Value,
        unit: str,
        ts_ns: int,
    ) -> Record:
        key = self._metric_key(resource_type, resource_id, name)
        # The hottest record: a fixed template, the same bytes json.dumps would give.
        value_json = (
            f'{{"schema":{SCHEMA},"value":{_json_value(value)},"unit":{_unit_json(unit)},'
            f'"ts":"{rfc3339(ts_ns)}","node":{self._node_json}}}'
        )
        return Record(
            key, value_json.encode(), "metrics", Severity.SAMPLE, upsert=True, created_ns=ts_ns
        )

    def _metric_key(self, resource_type: ResourceType, resource_id: str, name: str) -> str:
        cache_key = (resource_type, resource_id, name)
        key = self._metric_keys.get(cache_key)
        if key is None:
            key = f"{resource_key(resource_type, resource_id)}/metrics/{check_name('metric', name)}"
            if len(self._metric_keys) < KEY_CACHE_LIMIT:
                self._metric_keys[cache_key] = key
        return key

    def rollup(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        name: str,
        window_start_ns: int,
        window_s: float,
        stats: dict[str, float | int],
    ) -> Record:
        key = (
            f"{resource_key(resource_type, resource_id)}/history/{check_name('metric', name)}/"
            f"{rfc3339(window_start_ns)}"
        )
        document: dict[str, object] = {**stats, "window_s": window_s, "node": self.node}
        return Record(
            key,
            _dumps(document),
            "metrics",
            Severity.ROLLUP,
            upsert=True,
            created_ns=time.time_ns(),
        )

    def status(
        self, resource_type: ResourceType, resource_id: str, status: dict[str, object]
    ) -> Record:
        key = resource_key(resource_type, resource_id)
        document = {"status": status, "node": self.node, "ts": rfc3339(time.time_ns())}
        return Record(
            key, _dumps(document), None, Severity.INFO, upsert=True, created_ns=time.time_ns()
        )

    def state(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        state: str,
        since_ns: int,
        previous: str | None,
        reason: str,
    ) -> Record:
        key = f"{resource_key(resource_type, resource_id)}/state"
        document = {
            "state": state,
            "since": rfc3339(since_ns),
            "previous": previous,
            "reason": reason,
            "node": self.node,
        }
        return Record(key, _dumps(document), None, Severity.INFO, upsert=True, created_ns=since_ns)

    def transition(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        previous: str,
        state: str,
        at_ns: int,
        time_in_previous_ms: float | None,
        expected: bool,
    ) -> Record:
        key = f"{resource_key(resource_type, resource_id)}/transitions/{self._suffix(at_ns)}"
        document = {
            "from": previous,
            "to": state,
            "at": rfc3339(at_ns),
            "time_in_previous_ms": time_in_previous_ms,
            "expected": expected,
        }
        return Record(
            key,
            _dumps(document),
            "state_transitions",
            Severity.INFO,
            upsert=False,
            created_ns=at_ns,
        )

    def event(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        event_type: str,
        severity: Literal["info", "warning", "critical"],
        message: str,
        details: dict[str, object] | None = None,
        ts_ns: int | None = None,
    ) -> Record:
        at = time.time_ns() if ts_ns is None else ts_ns
        key = f"{resource_key(resource_type, resource_id)}/events/{self._suffix(at)}"
        document = {
            "type": check_name("event type", event_type),
            "severity": severity,
            "message": message,
            "details": details or {},
            "at": rfc3339(at),
            "node": self.node,
        }
        return Record(
            key, _dumps(document), "events", EVENT_SEVERITY[severity], upsert=False, created_ns=at
        )


def agent_key(node: str) -> str:
    return f"nodes/{check_name('node', node)}/agent"
