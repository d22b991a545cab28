"""`piccolo-agent status`: this node's resources and their key metrics, as a table.

The documents come from etcd (what every reader of the fleet sees); when etcd cannot be reached,
from the agent's local buffer, which holds the newest documents not yet pushed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.store.buffer import read_pending

Documents = Mapping[str, dict[str, Any]]
"""Key relative to the prefix (`model/vision-system`) -> decoded JSON value."""


def _cell(value: object, digits: int = 1) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]


def _status(documents: Documents, key: str) -> dict[str, Any]:
    document = documents.get(key) or {}
    status = document.get("status")
    return status if isinstance(status, dict) else {}


def render(
    node: str,
    *,
    models: Sequence[str],
    packages: Sequence[str],
    scenarios: Sequence[str],
    documents: Documents,
    source: str,
    live: Mapping[str, Mapping[str, object]] | None = None,
    running: str | None = None,
) -> str:
    """The status table of one node from its documents; `live`: model -> the agent's newest
    values (phase, cpu_usage, memory_usage, ...), which replace the documents' older ones;
    `running`: what the agent's API said (None: it did not answer)."""
    agent = documents.get(f"nodes/{node}/agent") or {}
    answering = "answering" if running is not None else "not answering"
    lines = [
        f"node {node}: agent {agent.get('version', 'unknown version')} {answering}"
        + (f" ({running})" if running else "")
        + (f", started {agent['started']}" if "started" in agent else "")
        + f"; documents from {source}"
        + ("; live values from the agent" if live else ""),
        "",
    ]
    model_rows = []
    for name in models:
        status = _status(documents, f"model/{name}")
        metrics = status.get("metrics") or {}
        state = documents.get(f"model/{name}/state") or {}
        now = (live or {}).get(name) or {}
        ready = [c.get("ready") for c in status.get("containerStatuses") or []]
        model_rows.append(
            [
                name,
                _cell(now.get("phase") or status.get("phase") or state.get("state")),
                _cell(all(ready) if ready else None),
                _cell(now.get("restarts", metrics.get("restarts"))),
                _cell(now.get("cpu_usage", metrics.get("cpuUsage"))),
                _cell(now.get("memory_usage", metrics.get("memoryUsage"))),
                _cell(now.get("memory_usage_percent", metrics.get("memoryUsagePercent"))),
                _cell(metrics.get("uptime")),
                _cell(metrics.get("lastError")),
            ]
        )
    lines += _table(
        ["MODEL", "PHASE", "READY", "RESTARTS", "CPU %", "MEM MB", "MEM %", "UPTIME", "LAST ERROR"],
        model_rows,
    )
    package_rows = []
    for name in packages:
        status = _status(documents, f"package/{name}")
        metrics = status.get("metrics") or {}
        relationships = metrics.get("modelRelationships") or {}
        healthy, total = relationships.get("healthy"), relationships.get("total")
        package_rows.append(
            [
                name,
                _cell(metrics.get("deploymentStatus")),
                _cell(status.get("currentState")),
                f"{healthy}/{total}" if total is not None else "-",
                _cell(metrics.get("version")),
                _cell(metrics.get("loadTime")),
            ]
        )
    lines += [
        "",
        *_table(["PACKAGE", "DEPLOYMENT", "STATE", "HEALTHY", "VERSION", "LOAD MS"], package_rows),
    ]
    scenario_rows = [
        [
            name,
            _cell((documents.get(f"scenario/{name}/metrics/dependency_status") or {}).get("value")),
        ]
        for name in scenarios
    ]
    lines += ["", *_table(["SCENARIO", "DEPENDENCIES"], scenario_rows)]
    return "\n".join(lines)


def wanted_keys(
    node: str, models: Sequence[str], packages: Sequence[str], scenarios: Sequence[str]
) -> list[str]:
    keys = [f"nodes/{node}/agent"]
    keys += [k for m in models for k in (f"model/{m}", f"model/{m}/state")]
    keys += [f"package/{p}" for p in packages]
    keys += [f"scenario/{s}/metrics/dependency_status" for s in scenarios]
    return keys


def from_buffer(path: Path, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The newest pending value of each key in the local buffer (read-only)."""
    return {key: json.loads(value) for key, value in read_pending(path, keys).items()}


async def from_etcd(
    get: Callable[[bytes], Any], prefix: str, keys: Sequence[str]
) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for key in keys:
        raw = await get(f"{prefix.rstrip('/')}/{key}".encode())
        if raw is not None:
            found[key] = json.loads(raw)
    return found
