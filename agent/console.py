"""The CLI's read side: `query`, `top` and the live part of `status`, through the agent's API.

`query` asks the local agent's API (`api.listen`, with its token or client certificate), or,
with `--etcd`, runs the same query code in this process straight against etcd (for a node whose
agent is not running). `top` asks the API once a second and draws one screen.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from agent.config import parse_listen
from agent.runtime.httpd import fetch, request_of
from agent.serve.api import Local, QueryApi
from agent.store.etcd import EtcdStore

if TYPE_CHECKING:
    from agent.config import Config
    from agent.manifests import Located


class Unanswered(Exception):  # noqa: N818 - nothing answered
    pass


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    document: Any
    """The JSON document (a problem document for an error); None when it was not JSON."""


def _client_context(config: Config) -> ssl.SSLContext | None:
    tls = config.api.tls
    if not tls.enabled:
        return None
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    context.check_hostname = False  # the agent's certificate names a node, not "127.0.0.1"
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


async def ask(config: Config, target: str, timeout_s: float = 5.0) -> Answer:
    """GET `target` from this node's agent; Unanswered when no agent answers there."""
    where = parse_listen(config.api.listen)
    token = None
    if config.api.token_file is not None:
        token = config.api.token_file.read_text(encoding="utf-8").strip()
    try:
        status, kind, body = await fetch(
            host=where.host,
            port=where.port,
            path=where.path,
            target=target,
            token=token,
            context=_client_context(config),
            timeout_s=timeout_s,
        )
    except (OSError, TimeoutError) as exc:
        raise Unanswered(f"no agent answers at {config.api.listen}: {exc}") from None
    document = json.loads(body) if "json" in kind else None
    return Answer(status, document)


def resource_target(
    what: str,
    kind: str,
    rid: str,
    *,
    names: str | None = None,
    start: str | None = None,
    end: str | None = None,
    limit: int | None = None,
    history: bool = False,
    source: str | None = None,
) -> str:
    query: dict[str, str] = {}
    if names:
        query["metric_names" if what == "metrics" else "event_types"] = names
    if start:
        query["from"] = start
    if end:
        query["to"] = end
    if limit is not None:
        query["limit"] = str(limit)
    if history:
        query["include_history"] = "true"
    if source:
        query["source"] = source
    path = f"/api/v1/monitoring/resources/{kind}/{rid}/{what}"
    return path + ("?" + urlencode(query) if query else "")


async def ask_etcd(config: Config, manifests: tuple[Located, ...], target: str) -> Answer:
    """The same query answered in this process from etcd (no agent needed)."""
    store = EtcdStore(config.data_storage.configuration)

    async def nothing(_prefix: str, _limit: int) -> list[tuple[str, bytes]]:
        return []

    local = Local(
        node=config.node.name,
        latest=dict,
        state=lambda _kind, _rid: None,
        pending=nothing,
        alerts=list,
        health=lambda: (False, []),
        metrics=lambda _openmetrics: b"",
    )
    api = QueryApi(
        store,
        prefix=config.data_storage.data_organization.prefix,
        manifests=lambda: manifests,
        local=local,
        always_etcd=True,
    )
    request = request_of("GET", target, {})
    try:
        response = await api.handle(request)
    finally:
        await store.close()
    return Answer(response.status, json.loads(response.body))


# Rendering -------------------------------------------------------------------------------------


def _cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def table(header: list[str], rows: list[list[str]], width: int | None = None) -> list[str]:
    widths = [max(len(c) for c in column) for column in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    return [line[:width] for line in lines] if width else lines


def render_answer(what: str, document: dict[str, Any]) -> str:
    """A query's answer as text (`--json` prints the document itself)."""
    head = (
        f"{document.get('resource_type')}/{document.get('resource_id')} "
        f"from {document.get('source')}"
        + (f" at revision {document['revision']}" if document.get("revision") else "")
    )
    if what == "metrics":
        rows = []
        for metric in document.get("metrics", []):
            latest = metric.get("latest") or {}
            history = metric.get("history") or []
            lows = [w.get("min") for w in history if isinstance(w.get("min"), int | float)]
            highs = [w.get("max") for w in history if isinstance(w.get("max"), int | float)]
            rows.append(
                [
                    metric.get("name", "?"),
                    _cell(latest.get("value")),
                    _cell(latest.get("unit")),
                    _cell(latest.get("ts")),
                    str(len(history)),
                    _cell(min(lows) if lows else None),
                    _cell(max(highs) if highs else None),
                ]
            )
        header = ["METRIC", "VALUE", "UNIT", "AT", "WINDOWS", "MIN", "MAX"]
        return "\n".join([head, *table(header, rows)])
    if what == "state":
        state = document.get("state") or {}
        lines = [head, f"state {_cell(state.get('state'))} since {_cell(state.get('since'))}"]
        transitions = document.get("transitions")
        if transitions is not None:
            rows = [
                [
                    _cell(t.get("at")),
                    _cell(t.get("from")),
                    _cell(t.get("to")),
                    _cell(t.get("time_in_previous_ms")),
                    _cell(t.get("expected")),
                ]
                for t in transitions
            ]
            lines += table(["AT", "FROM", "TO", "IN PREVIOUS MS", "EXPECTED"], rows)
        return "\n".join(lines)
    rows = [
        [
            _cell(e.get("at")),
            _cell(e.get("type")),
            _cell(e.get("severity")),
            _cell(e.get("message")),
        ]
        for e in document.get("events", [])
    ]
    return "\n".join([head, *table(["AT", "TYPE", "SEVERITY", "MESSAGE"], rows)])


# top -------------------------------------------------------------------------------------------

SORTS = {"name": 0, "cpu": 2, "memory": 3, "misses": 4}


@dataclass(slots=True)
class Screen:
    """What `top` shows: one row per model, package and scenario, and the firing alerts."""

    node: str
    models: list[list[str]]
    packages: list[list[str]]
    scenarios: list[list[str]]
    alerts: list[str]
    source: str
    at: float


def _latest(document: dict[str, Any]) -> dict[str, Any]:
    return {m["name"]: (m.get("latest") or {}).get("value") for m in document.get("metrics", [])}


async def gather_screen(config: Config, names: dict[str, list[str]]) -> Screen:
    """One round of API reads for `top` (the agent's live data: `source=local`)."""
    models = []
    for model in names["models"]:
        answer = await ask(config, resource_target("metrics", "model", model, source="local"))
        values = _latest(answer.document or {}) if answer.status == 200 else {}
        models.append(
            [
                model,
                _cell(values.get("phase")),
                _cell(values.get("cpu_usage")),
                _cell(values.get("memory_usage")),
                _cell(values.get("deadline_miss_count", 0 if values else None)),
                _cell(values.get("safety_status")),
            ]
        )
    packages = []
    for package in names["packages"]:
        answer = await ask(config, resource_target("state", "package", package, source="local"))
        state = (answer.document or {}).get("state") or {}
        packages.append([package, _cell(state.get("state"))])
    scenarios = []
    for scenario in names["scenarios"]:
        answer = await ask(config, resource_target("state", "scenario", scenario, source="local"))
        state = (answer.document or {}).get("state") or {}
        metrics = await ask(
            config, resource_target("metrics", "scenario", scenario, source="local")
        )
        values = _latest(metrics.document or {}) if metrics.status == 200 else {}
        scenarios.append(
            [scenario, _cell(state.get("state")), _cell(values.get("dependency_status"))]
        )
    alerts_answer = await ask(config, "/api/v1/monitoring/alerts")
    alerts = [
        f"{a.get('severity', '?'):8} {a.get('kind', '?')} {a.get('resource', {}).get('id', '?')}"
        f" x{a.get('count', 1)}"
        for a in (alerts_answer.document or {}).get("alerts", [])
    ]
    return Screen(config.node.name, models, packages, scenarios, alerts, "agent", time.time())


def draw(screen: Screen, *, sort: str = "name", width: int = 80, height: int = 24) -> list[str]:
    """The screen as at most `height` lines of at most `width` characters."""
    column = SORTS.get(sort, 0)

    def key(row: list[str]) -> tuple[int, float | str]:
        if column == 0:
            return (0, row[0])
        try:
            return (0, -float(row[column]))
        except ValueError:
            return (1, row[0])

    clock = time.strftime("%H:%M:%S", time.localtime(screen.at))
    lines = [
        f"piccolo-agent top - node {screen.node} - {clock} - sort {sort} (n c m d, q quits)",
        "",
    ]
    lines += table(
        ["MODEL", "PHASE", "CPU %", "MEM MB", "MISSES", "TIMING"],
        sorted(screen.models, key=key),
        width,
    )
    lines += ["", *table(["PACKAGE", "STATE"], screen.packages, width)]
    lines += ["", *table(["SCENARIO", "STATE", "DEPENDENCIES"], screen.scenarios, width)]
    lines += ["", f"ALERTS FIRING: {len(screen.alerts)}", *screen.alerts]
    if len(lines) > height:
        lines = [*lines[: height - 1], f"... {len(lines) - height + 1} more lines"]
    return [line[:width] for line in lines]


def top(config: Config, names: dict[str, list[str]], *, sort: str = "name") -> int:
    """Redraw every second until `q` (curses: a real terminal)."""
    import curses  # noqa: PLC0415 - only `top` draws a terminal

    def run(window: curses.window) -> int:
        nonlocal sort
        curses.curs_set(0)
        window.nodelay(True)  # noqa: FBT003 - curses takes a flag
        loop = asyncio.new_event_loop()
        message = ""
        try:
            while True:
                try:
                    screen = loop.run_until_complete(gather_screen(config, names))
                    message = ""
                except Unanswered as exc:
                    screen = Screen(config.node.name, [], [], [], [], "none", time.time())
                    message = str(exc)
                height, width = window.getmaxyx()
                window.erase()
                lines = draw(screen, sort=sort, width=width - 1, height=height - 1)
                if message:
                    lines = [*lines[:1], message[: width - 1], *lines[1:]]
                for row, line in enumerate(lines[: height - 1]):
                    window.addstr(row, 0, line)
                window.refresh()
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline:
                    key = window.getch()
                    if key in (ord("q"), ord("Q")):
                        return 0
                    picked = {"n": "name", "c": "cpu", "m": "memory", "d": "misses"}.get(
                        chr(key) if 0 <= key < 256 else ""
                    )
                    if picked:
                        sort = picked
                        break
                    time.sleep(0.05)
        finally:
            loop.close()

    return curses.wrapper(run)
