"""The REST query API (seed 5.2), `/metrics`, `/healthz` and `/readyz`: the read side.

It reads, it never writes. Data comes from etcd, so any agent answers for the whole fleet; one
request reads at one etcd revision (the first read's, returned as `revision`). When etcd cannot
answer, this node's own resources are answered from what the agent holds — the latest values it
measured, its state tracker, the records still waiting in its buffer — with `"source": "local"`;
another node's resources are then 503. Errors are RFC 9457 problem documents. The parameters and
their spelling are in `openapi()` (served at `/api/v1/openapi.json`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from agent import __version__
from agent.clock import parse_rfc3339, rfc3339
from agent.errors import SinkUnavailable
from agent.manifests import Model, Package, Scenario
from agent.model import RESOURCE_ID_PATTERN, ResourceType
from agent.runtime.httpd import Request, Response, json_response, problem
from agent.serve.prometheus import OPENMETRICS_TYPE, TEXT_TYPE
from agent.store.election import LEADER_KEY
from agent.store.etcd import StoreRejected, prefix_range_end
from agent.units import parse_duration

if TYPE_CHECKING:
    from agent.manifests import Located
    from agent.model import Alert, Sample

MAX_LIMIT = 1000
"""The most events or transitions one request returns (`limit` above it is cut to it)."""
DEFAULT_LIMIT = 100
MAX_SCAN = 5000
"""Keys read at most to answer one filtered request."""
ETCD_TIMEOUT_S = 2.0
"""How long a request waits for etcd before it answers from the local data."""
DEFAULT_RANGE_S = 3600.0
_TYPES = {t.value for t in ResourceType}
_RELATIVE = re.compile(r"-(.+)")
_PATH = re.compile(
    r"/api/v1/monitoring/resources/(?P<type>[^/]+)/(?P<id>[^/]+)/(?P<what>metrics|state|events)"
)


class Store(Protocol):
    @property
    def reachable(self) -> bool: ...

    async def range(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        revision: int | None = None,
        limit: int = 0,
        newest_first: bool = False,
    ) -> tuple[int, list[tuple[bytes, bytes]]]: ...


class BadRequest(Exception):  # noqa: N818 - answered as 400
    pass


class NotFound(Exception):  # noqa: N818 - answered as 404
    pass


@dataclass(frozen=True, slots=True)
class Local:
    """What the agent itself holds, for answers while etcd is away (and for /metrics)."""

    node: str
    latest: Callable[[], Mapping[tuple[str, str, str], Sample]]
    state: Callable[[ResourceType, str], tuple[str, int] | None]
    """(state, since ns) as the tracker has it."""
    pending: Callable[[str, int], Awaitable[list[tuple[str, bytes]]]]
    """(key prefix, limit) -> the records under it still waiting in the buffer, oldest first."""
    alerts: Callable[[], Sequence[Alert]]
    health: Callable[[], tuple[bool, list[str]]]
    """(ready, stalled stages): the truth the watchdog uses."""
    metrics: Callable[[bool], bytes]
    """The Prometheus exposition (True: OpenMetrics)."""


class _Read:
    """The reads of one request: at one revision, under one data prefix."""

    def __init__(self, store: Store, prefix: str) -> None:
        self._store = store
        self._prefix = prefix
        self.revision: int | None = None

    async def range(
        self, key: str, end: str | None = None, *, limit: int = 0, newest_first: bool = False
    ) -> list[tuple[str, bytes]]:
        start = (self._prefix + key).encode()
        stop = prefix_range_end(start) if end is None else (self._prefix + end).encode()
        revision, kvs = await asyncio.wait_for(
            self._store.range(
                start, stop, revision=self.revision, limit=limit, newest_first=newest_first
            ),
            ETCD_TIMEOUT_S,
        )
        if self.revision is None:
            self.revision = revision
        cut = len(self._prefix)
        return [(k.decode()[cut:], v) for k, v in kvs]

    async def get(self, key: str) -> bytes | None:
        found = await self.range(key, key + "\0")
        return found[0][1] if found else None


def _json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return {"damaged": raw.decode("utf-8", "replace")[:200]}


def parse_time(text: str, now_ns: int) -> int:
    """RFC 3339, `now`, or relative to now: `-1h`, `-30m`, `-90s` (the config's durations)."""
    text = text.strip()
    if text == "now":
        return now_ns
    relative = _RELATIVE.fullmatch(text)
    if relative is not None:
        try:
            return now_ns - int(parse_duration(relative.group(1)) * 1e9)
        except ValueError as exc:
            raise BadRequest(f"bad relative time {text!r}: {exc}") from None
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _source(request: Request) -> str:
    source = request.param("source") or "any"
    if source not in {"any", "local"}:
        raise BadRequest(f"source is local or any; got {source!r}")
    return source


def _names(request: Request, name: str) -> list[str]:
    """A repeatable, comma-separated parameter's values."""
    return [part.strip() for v in request.query.get(name, ()) for part in v.split(",") if part]


class QueryApi:
    def __init__(
        self,
        store: Store,
        *,
        prefix: str,
        manifests: Callable[[], Sequence[Located]],
        local: Local,
        always_etcd: bool = False,
    ) -> None:
        """`always_etcd`: ask etcd even when the store's last call failed or none was made
        (a one-shot reader); by default a store that is known unreachable is not waited for."""
        self._always_etcd = always_etcd
        self._store = store
        self._prefix = prefix.rstrip("/") + "/"
        self._manifests = manifests
        self._local = local

    # routing ---------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        fixed: dict[str, Callable[[Request], Awaitable[Response]]] = {
            "/metrics": self._metrics,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/api/v1/openapi.json": self._openapi,
            "/api/v1/monitoring/resources": self._resources,
            "/api/v1/monitoring/nodes": self._nodes_answer,
            "/api/v1/monitoring/alerts": self._alerts,
        }
        try:
            route = fixed.get(path)
            if route is not None:
                return await route(request)
            match = _PATH.fullmatch(path)
            if match is None:
                return problem(404, "Not found", f"no such endpoint: {path}")
            kind, rid = self._resource(match["type"], match["id"])
            what = match["what"]
            source = _source(request)
            reader = {"metrics": self._read_metrics, "state": self._read_state}.get(
                what, self._read_events
            )
            return await self._answer(
                lambda read: reader(read, kind, rid, request),
                lambda: self._local_resource(kind, rid, what, request),
                local_only=source == "local",
            )
        except BadRequest as exc:
            return problem(400, "Bad request", str(exc))
        except NotFound as exc:
            return problem(404, "Not found", str(exc))
        except _Unavailable as exc:
            return problem(503, "Unavailable", str(exc))

    async def _openapi(self, _request: Request) -> Response:
        return json_response(openapi())

    async def _nodes_answer(self, _request: Request) -> Response:
        return await self._answer(self._nodes, self._local_nodes)

    async def _answer(
        self,
        remote: Callable[[_Read], Awaitable[dict[str, object]]],
        local: Callable[[], Awaitable[dict[str, object]]],
        *,
        local_only: bool = False,
    ) -> Response:
        """From etcd at one revision; when etcd cannot answer (or `local_only`: the agent's own
        live data is asked for), from the local data."""
        read = _Read(self._store, self._prefix)
        if (self._always_etcd or self._store.reachable) and not local_only:
            try:
                document = await remote(read)
            except (SinkUnavailable, TimeoutError):
                pass
            except StoreRejected as exc:
                return problem(503, "etcd refused the read", str(exc))
            else:
                return json_response({**document, "source": "etcd", "revision": read.revision})
        document = await local()
        return json_response({**document, "source": "local", "revision": None})

    def _resource(self, kind: str, rid: str) -> tuple[ResourceType, str]:
        if kind not in _TYPES:
            raise BadRequest(f"unknown resource type {kind!r}: one of {', '.join(sorted(_TYPES))}")
        if not RESOURCE_ID_PATTERN.fullmatch(rid):
            raise BadRequest(
                f"invalid resource id {rid!r}: ids match {RESOURCE_ID_PATTERN.pattern}"
            )
        return ResourceType(kind), rid

    def _known(self) -> dict[tuple[str, str], str | None]:
        """(type, id) -> the node it is placed on (None: not placed or several) of every
        resource the manifests define, and every node they name."""
        found: dict[tuple[str, str], str | None] = {}
        for item in self._manifests():
            manifest = item.manifest
            if isinstance(manifest, Model):
                found[("model", manifest.name)] = manifest.spec.node
                if manifest.spec.node:
                    found[("node", manifest.spec.node)] = manifest.spec.node
            elif isinstance(manifest, Package):
                nodes = {m.node for m in manifest.spec.models if m.node}
                found[("package", manifest.name)] = nodes.pop() if len(nodes) == 1 else None
                for model in manifest.spec.models:
                    found.setdefault(("model", model.name), model.node)
                    if model.node:
                        found[("node", model.node)] = model.node
            elif isinstance(manifest, Scenario):
                found[("scenario", manifest.name)] = None
        found[("node", self._local.node)] = self._local.node
        return found

    async def _exists(self, read: _Read, kind: ResourceType, rid: str) -> None:
        if (kind.value, rid) in self._known():
            return
        if not await read.range(f"{kind.value}/{rid}/", limit=1) and (
            await read.get(f"{kind.value}/{rid}") is None
        ):
            raise NotFound(f"no {kind.value} {rid!r}: no manifest defines it, etcd holds nothing")

    # the three reads of a resource -----------------------------------------------------------

    def _window(self, request: Request) -> tuple[int, int]:
        now = time.time_ns()
        start = parse_time(request.param("from") or f"-{int(DEFAULT_RANGE_S)}s", now)
        end = parse_time(request.param("to") or "now", now)
        if start > end:
            raise BadRequest("from is after to")
        return start, end

    @staticmethod
    def _limit(request: Request) -> int:
        text = request.param("limit")
        if text is None:
            return DEFAULT_LIMIT
        if not text.isdigit() or int(text) < 1:
            raise BadRequest(f"limit must be a positive integer; got {text!r}")
        return min(int(text), MAX_LIMIT)

    async def _read_metrics(
        self, read: _Read, kind: ResourceType, rid: str, request: Request
    ) -> dict[str, object]:
        start, end = self._window(request)
        names = _names(request, "metric_names")
        base = f"{kind.value}/{rid}"
        await self._exists(read, kind, rid)
        # One read of every latest value (it fixes the revision), then the history ranges of
        # the metrics asked for, all at once at that revision.
        latest = {
            key.rsplit("/", 1)[1]: _json(raw) for key, raw in await read.range(f"{base}/metrics/")
        }
        wanted = names or sorted(latest)
        histories = await asyncio.gather(
            *(
                read.range(
                    f"{base}/history/{name}/{rfc3339(start)}",
                    f"{base}/history/{name}/{rfc3339(end + 1)}",
                    limit=MAX_SCAN,
                )
                for name in wanted
            )
        )
        metrics = [
            {
                "name": name,
                "latest": latest.get(name),
                "history": [
                    {"window_start": key.rsplit("/", 1)[1], **_object(_json(raw))}
                    for key, raw in windows
                ],
            }
            for name, windows in zip(wanted, histories, strict=True)
        ]
        return {**_about(kind, rid, start, end), "metrics": metrics}

    async def _read_state(
        self, read: _Read, kind: ResourceType, rid: str, request: Request
    ) -> dict[str, object]:
        include = (request.param("include_history") or "false").lower()
        if include not in {"true", "false", "1", "0"}:
            raise BadRequest(f"include_history is true or false; got {include!r}")
        start, end = self._window(request)
        base = f"{kind.value}/{rid}"
        raw = await read.get(f"{base}/state")
        if raw is None:
            await self._exists(read, kind, rid)
        document: dict[str, object] = {
            **_about(kind, rid, start, end),
            "state": None if raw is None else _json(raw),
        }
        if include in {"true", "1"}:
            found = await read.range(
                f"{base}/transitions/{rfc3339(start)}",
                f"{base}/transitions/{rfc3339(end + 1)}",
                limit=self._limit(request),
                newest_first=True,
            )
            document["transitions"] = [_json(v) for _, v in found]
        return document

    async def _read_events(
        self, read: _Read, kind: ResourceType, rid: str, request: Request
    ) -> dict[str, object]:
        start, end = self._window(request)
        limit = self._limit(request)
        wanted = set(_names(request, "event_types"))
        base = f"{kind.value}/{rid}/events/"
        await self._exists(read, kind, rid)
        found = await read.range(
            base + rfc3339(start),
            base + rfc3339(end + 1),
            limit=MAX_SCAN if wanted else limit,
            newest_first=True,
        )
        events = [_json(v) for _, v in found]
        if wanted:
            events = [e for e in events if isinstance(e, dict) and e.get("type") in wanted]
        return {**_about(kind, rid, start, end), "events": events[:limit]}

    # the same from local data ----------------------------------------------------------------

    def _own(self, kind: ResourceType, rid: str) -> bool:
        if kind is ResourceType.NODE:
            return rid == self._local.node
        return (
            any((t, i) == (kind.value, rid) for t, i, _ in self._local.latest())
            or self._local.state(kind, rid) is not None
        )

    async def _local_resource(
        self, kind: ResourceType, rid: str, what: str, request: Request
    ) -> dict[str, object]:
        if not self._own(kind, rid):
            raise _Unavailable(f"etcd cannot answer and {kind.value} {rid!r} is not this node's")
        start, end = self._window(request)
        base = f"{kind.value}/{rid}"
        about = _about(kind, rid, start, end)
        if what == "metrics":
            names = set(_names(request, "metric_names"))
            series = sorted(
                sample
                for (t, i, _), sample in self._local.latest().items()
                if (t, i) == (kind.value, rid) and (not names or sample.metric in names)
            )
            pending = await self._local.pending(f"{base}/history/", MAX_SCAN)
            metrics = []
            for sample in series:
                windows = [
                    {"window_start": key.rsplit("/", 1)[1], **_object(_json(raw))}
                    for key, raw in pending
                    if key.startswith(f"{base}/history/{sample.metric}/")
                ]
                metrics.append(
                    {
                        "name": sample.metric,
                        "latest": {
                            "value": sample.value,
                            "unit": sample.unit,
                            "ts": rfc3339(sample.ts_ns),
                            "node": self._local.node,
                        },
                        "history": windows,
                    }
                )
            return {**about, "metrics": metrics}
        if what == "state":
            current = self._local.state(kind, rid)
            state = None if current is None else {"state": current[0], "since": rfc3339(current[1])}
            pending = await self._local.pending(f"{base}/transitions/", MAX_SCAN)
            transitions = [_json(v) for _, v in reversed(pending)][: self._limit(request)]
            return {**about, "state": state, "transitions": transitions}
        wanted = set(_names(request, "event_types"))
        pending = await self._local.pending(f"{base}/events/", MAX_SCAN)
        events = [_json(v) for _, v in reversed(pending)]
        if wanted:
            events = [e for e in events if isinstance(e, dict) and e.get("type") in wanted]
        return {**about, "events": events[: self._limit(request)]}

    # fleet-wide views ------------------------------------------------------------------------

    async def _resources(self, request: Request) -> Response:
        kind = request.param("type")
        prefix = request.param("prefix") or ""
        if kind is not None and kind not in _TYPES:
            raise BadRequest(f"unknown resource type {kind!r}: one of {', '.join(sorted(_TYPES))}")
        if prefix and not re.fullmatch(r"[A-Za-z0-9._-]*", prefix):
            raise BadRequest(f"invalid prefix {prefix!r}: ids hold letters, digits and ._-")
        found = [
            {"type": t, "id": i, "node": node}
            for (t, i), node in sorted(self._known().items())
            if (kind is None or t == kind) and i.startswith(prefix)
        ]
        return json_response({"resources": found, "source": "manifests"})

    async def _nodes(self, read: _Read) -> dict[str, object]:
        entries = await read.range("nodes/")
        leader_raw = await read.get(LEADER_KEY)
        leader = None if leader_raw is None else leader_raw.decode("utf-8", "replace")
        alive: dict[str, object] = {}
        for key, raw in entries:
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == "agent":
                alive[parts[1]] = _json(raw)
        names = sorted({i for t, i in self._known() if t == "node"} | set(alive))
        nodes = [
            {
                "name": name,
                "alive": name in alive,
                "elected": name == leader,
                "agent": alive.get(name),
                "labels": _object(alive.get(name)).get("labels"),
            }
            for name in names
        ]
        return {"nodes": nodes, "elected": leader}

    async def _local_nodes(self) -> dict[str, object]:
        return {
            "nodes": [{"name": self._local.node, "alive": True, "elected": None}],
            "elected": None,
        }

    async def _alerts(self, _request: Request) -> Response:
        alerts = [json.loads(a.payload()) for a in self._local.alerts()]
        return json_response({"node": self._local.node, "alerts": alerts})

    async def _metrics(self, request: Request) -> Response:
        accept = request.headers.get("accept", "")
        openmetrics = "application/openmetrics-text" in accept
        body = self._local.metrics(openmetrics)
        return Response(200, body, OPENMETRICS_TYPE if openmetrics else TEXT_TYPE)

    async def _healthz(self, _request: Request) -> Response:
        _, stalled = self._local.health()
        if stalled:
            return problem(503, "Stalled", f"stages stalled: {', '.join(stalled)}", stalled=stalled)
        return json_response({"status": "ok", "version": __version__})

    async def _readyz(self, _request: Request) -> Response:
        ready, stalled = self._local.health()
        if not ready or stalled:
            detail = "starting" if not ready else f"stages stalled: {', '.join(stalled)}"
            return problem(503, "Not ready", detail, stalled=stalled)
        return json_response({"status": "ready"})


class _Unavailable(Exception):  # noqa: N818 - answered as 503
    pass


def _object(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _about(kind: ResourceType, rid: str, start: int, end: int) -> dict[str, object]:
    return {
        "resource_type": kind.value,
        "resource_id": rid,
        "time_range": {"from": rfc3339(start), "to": rfc3339(end)},
    }


def _parameter(name: str, where: str, description: str, **schema: object) -> dict[str, object]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": {"type": "string", **schema},
    }


def openapi() -> dict[str, object]:
    """The OpenAPI 3.1 description of this API, with the exact spelling of every parameter."""
    time_help = (
        "RFC 3339 (2026-12-06T10:00:00Z, fractions and offsets allowed), `now`, or relative to "
        "now: a minus and a duration as the config writes them (-1h, -30m, -90s, -1h30m)"
    )
    resource = [
        _parameter("resource_type", "path", "scenario, package, model or node"),
        _parameter("resource_id", "path", f"matches {RESOURCE_ID_PATTERN.pattern}"),
        _parameter(
            "source",
            "query",
            "any (default: etcd, or this agent's data when etcd is away) or local (this "
            "agent's live data: the values it measured last, not yet deadbanded)",
        ),
        _parameter("from", "query", f"start of the time range (default -1h): {time_help}"),
        _parameter("to", "query", f"end of the time range (default now): {time_help}"),
    ]
    limit = _parameter(
        "limit", "query", f"at most this many (default {DEFAULT_LIMIT}, cut to {MAX_LIMIT})"
    )
    problem_ref = {"description": "RFC 9457 problem document (application/problem+json)"}
    errors: dict[str, object] = {str(code): problem_ref for code in (400, 404, 405, 503)}

    def get(summary: str, parameters: Iterable[dict[str, object]] = ()) -> dict[str, object]:
        responses: dict[str, object] = {"200": {"description": "JSON"}, **errors}
        return {
            "get": {
                "summary": summary,
                "parameters": list(parameters),
                "responses": responses,
            }
        }

    base = "/api/v1/monitoring/resources/{resource_type}/{resource_id}"
    return {
        "openapi": "3.1.0",
        "info": {"title": "piccolo-agent query API", "version": __version__},
        "paths": {
            f"{base}/metrics": get(
                "Latest values and history rollups in the time range",
                [
                    *resource,
                    _parameter(
                        "metric_names",
                        "query",
                        "metric names, repeatable or comma-separated (default: every metric)",
                    ),
                ],
            ),
            f"{base}/state": get(
                "The state, and with include_history=true its transitions (newest first)",
                [*resource, _parameter("include_history", "query", "true or false"), limit],
            ),
            f"{base}/events": get(
                "Events in the time range, newest first",
                [
                    *resource,
                    _parameter("event_types", "query", "repeatable or comma-separated"),
                    limit,
                ],
            ),
            "/api/v1/monitoring/resources": get(
                "Resources the manifests define (prefix search on ids)",
                [
                    _parameter("type", "query", "scenario, package, model or node"),
                    _parameter("prefix", "query", "the ids' beginning"),
                ],
            ),
            "/api/v1/monitoring/nodes": get("Nodes: liveness, version, labels, elected agent"),
            "/api/v1/monitoring/alerts": get("The alert episodes firing on this node now"),
            "/metrics": get("Prometheus text exposition; OpenMetrics when Accept asks for it"),
            "/healthz": get("200 while no stage is stalled (the watchdog's truth)"),
            "/readyz": get("200 once started and while no stage is stalled"),
        },
    }
