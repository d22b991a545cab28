"""A small HTTP/1.1 server on asyncio streams, driven by h11: the read side's listener.

Chosen over aiohttp and uvicorn: the agent already carries h11 (the Podman adapter), the server
needs GET and HEAD only, and a server on asyncio streams adds no thread, no second event loop and
no dependency. Measured on these machines: an idle listener adds ~0.3 MB RSS (`bench/api.py`).

It defends the agent, not only answers it:

- **Deadlines.** A request's head must arrive within `head_timeout_s` of its first byte, or of
  the connection's start (a slow-loris client is cut off); a handler must answer within
  `handler_timeout_s` (then 503); an idle keep-alive connection is closed after `idle_timeout_s`.
- **Sizes.** A head over `max_head_bytes` is refused (431); any request body is refused (413)
  without being read, and the connection closed: nothing here takes a body.
- **Connections.** At most `max_connections` at once; beyond, a new one gets 503 and is closed.
- **Methods.** GET and HEAD; anything else is 405 with `Allow: GET, HEAD`.
- **Access.** With a bearer token, a request without `Authorization: Bearer <token>` is 401;
  with TLS, the `ssl.SSLContext` given (client certificates: `CERT_REQUIRED`) is used.

Handlers take a `Request` and return a `Response`; `problem()` makes an RFC 9457 document.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

import h11

if TYPE_CHECKING:
    import ssl
    from pathlib import Path

_log = logging.getLogger(__name__)

_READ_SIZE = 16384
PROBLEM_TYPE = "application/problem+json"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    """GET or HEAD (nothing else reaches a handler)."""
    path: str
    """Percent-decoded, without the query."""
    query: Mapping[str, tuple[str, ...]]
    """Each parameter's values in order; a blank value is kept as ''."""
    headers: Mapping[str, str]
    """Lower-case names; a repeated header's values joined with ', '."""

    def param(self, name: str) -> str | None:
        """The last value of `name`, or None."""
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def request_of(method: str, target: str, headers: Mapping[str, str]) -> Request:
    """The `Request` of a request line's target (`/path?a=1&a=2`): the path percent-decoded,
    each parameter's values in order."""
    split = urlsplit(target)
    query = {k: tuple(v) for k, v in parse_qs(split.query, keep_blank_values=True).items()}
    return Request(method, unquote(split.path), query, headers)


def json_response(document: object, status: int = 200) -> Response:
    return Response(status, json.dumps(document, separators=(",", ":")).encode())


def problem(status: int, title: str, detail: str, **extra: object) -> Response:
    """An RFC 9457 problem document (`type` about:blank: the status says what kind)."""
    document = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return Response(status, json.dumps(document).encode(), PROBLEM_TYPE)


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = 32
    head_timeout_s: float = 5.0
    handler_timeout_s: float = 5.0
    idle_timeout_s: float = 30.0
    max_head_bytes: int = 16384


@dataclass(slots=True)
class ServerStats:
    requests: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    """Reason (slow_head, head_too_large, body, busy, method, unauthorized, bad_request,
    deadline) -> requests or connections refused."""

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1


class _Refused(Exception):  # noqa: N818 - control flow: answer and close
    def __init__(self, response: Response | None, reason: str) -> None:
        super().__init__(reason)
        self.response = response
        self.reason = reason


class HttpServer:
    """Serves `handler` on TCP or a Unix socket until `close()`."""

    def __init__(
        self,
        handler: Handler,
        *,
        limits: Limits | None = None,
        token: str | None = None,
    ) -> None:
        self._handler = handler
        self._limits = limits or Limits()
        self._token = token
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._closing = False
        self.stats = ServerStats()

    @property
    def sockets(self) -> list[object]:
        return [] if self._server is None else list(self._server.sockets)

    async def listen_tcp(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        self._server = await asyncio.start_server(
            self._accept, host, port, ssl=context, limit=self._limits.max_head_bytes
        )

    async def listen_unix(self, path: Path) -> None:
        """Listen on a Unix socket at `path` (a stale one is replaced), mode 0660."""
        path.unlink(missing_ok=True)  # noqa: ASYNC240 - a metadata call, once at start
        self._server = await asyncio.start_unix_server(
            self._accept, str(path), limit=self._limits.max_head_bytes
        )
        path.chmod(0o660)  # noqa: ASYNC240 - as above

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - a stream callback runs in its own task
        if len(self._connections) >= self._limits.max_connections:
            self.stats.refuse("busy")
            await _send_and_close(writer, None, problem(503, "Busy", "too many connections"))
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, h11.LocalProtocolError):
            pass
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # Closed by `close()`: end quietly (asyncio would log a cancelled callback task).
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Requests one after the other on one connection (HTTP/1.1 keep-alive)."""
        limits = self._limits
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
        first = True
        while True:
            try:
                request = await self._read_head(http, reader, first=first)
            except _Refused as refused:
                self.stats.refuse(refused.reason)
                if refused.response is not None:
                    await _send_and_close(writer, http, refused.response)
                return
            if request is None:
                return  # the client closed, or stayed idle too long
            first = False
            self.stats.requests += 1
            response = await self._answer(request)
            writer.write(_serialize(http, response, head=request.method == "HEAD"))
            await writer.drain()
            if http.our_state is h11.MUST_CLOSE or http.their_state is not h11.DONE:
                return
            http.start_next_cycle()

    async def _read_head(
        self, http: h11.Connection, reader: asyncio.StreamReader, *, first: bool
    ) -> Request | None:
        """The next request's head; None when the client closed or stayed idle too long.

        A new connection must send its first head within `head_timeout_s`; on a kept-alive one
        the next head may wait `idle_timeout_s` for its first byte, then has `head_timeout_s`.
        """
        limits = self._limits
        idle = not first
        deadline = time.monotonic() + (limits.idle_timeout_s if idle else limits.head_timeout_s)
        received = 0
        while True:
            event = self._next(http)
            if event is h11.NEED_DATA:
                try:
                    data = await asyncio.wait_for(
                        reader.read(_READ_SIZE), max(0.0, deadline - time.monotonic())
                    )
                except TimeoutError:
                    if idle:
                        return None
                    raise _Refused(None, "slow_head") from None
                if not data:
                    return None
                if idle:
                    idle = False
                    deadline = time.monotonic() + limits.head_timeout_s
                received += len(data)
                http.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                return self._complete(http, event, received)
            if isinstance(event, h11.ConnectionClosed):
                return None
            raise _Refused(problem(400, "Bad request", "not an HTTP request"), "bad_request")

    def _complete(self, http: h11.Connection, event: h11.Request, received: int) -> Request:
        """The request of a complete head of `received` bytes, once checked."""
        if received > self._limits.max_head_bytes:
            # It came whole in one read: h11 bounds only a head still incomplete.
            raise _Refused(
                problem(431, "Request header fields too large", "the head is too long"),
                "head_too_large",
            )
        request = self._request(event)
        if not isinstance(self._next(http), h11.EndOfMessage):
            raise _Refused(
                problem(413, "Content too large", "this API takes no request body"), "body"
            )
        return request

    def _next(self, http: h11.Connection) -> object:
        try:
            return http.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                raise _Refused(
                    problem(431, "Request header fields too large", str(exc)), "head_too_large"
                ) from None
            raise _Refused(problem(400, "Bad request", str(exc)), "bad_request") from None

    def _request(self, event: h11.Request) -> Request:
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        method = event.method.decode("ascii", "replace")
        length = headers.get("content-length", "0").strip()
        if headers.get("transfer-encoding") or (length not in {"", "0"}):
            raise _Refused(
                problem(413, "Content too large", "this API takes no request body"), "body"
            )
        if method not in {"GET", "HEAD"}:
            response = problem(405, "Method not allowed", f"{method} is not allowed; GET, HEAD are")
            raise _Refused(
                Response(response.status, response.body, PROBLEM_TYPE, (("Allow", "GET, HEAD"),)),
                "method",
            )
        if self._token is not None:
            given = headers.get("authorization", "")
            expected = f"Bearer {self._token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                response = problem(401, "Unauthorized", "a bearer token is required")
                raise _Refused(
                    Response(401, response.body, PROBLEM_TYPE, (("WWW-Authenticate", "Bearer"),)),
                    "unauthorized",
                )
        return request_of(method, event.target.decode("latin-1"), headers)

    async def _answer(self, request: Request) -> Response:
        try:
            return await asyncio.wait_for(self._handler(request), self._limits.handler_timeout_s)
        except TimeoutError:
            self.stats.refuse("deadline")
            return problem(
                503, "Deadline exceeded", "no answer within the request's deadline; try again"
            )
        except Exception:  # noqa: BLE001 - a failing handler answers 500, it never stops the server
            _log.exception("API handler failed for %s", request.path)
            return problem(500, "Internal error", "the agent could not answer; see its log")


def _serialize(http: h11.Connection, response: Response, *, head: bool = False) -> bytes:
    """The response in bytes; for a HEAD request its head only (with the body's length)."""
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        ("Cache-Control", "no-store"),
        *response.headers,
    ]
    out = http.send(h11.Response(status_code=response.status, headers=headers)) or b""
    if response.body and not head:
        out += http.send(h11.Data(data=response.body)) or b""
    return out + (http.send(h11.EndOfMessage()) or b"")


async def _send_and_close(
    writer: asyncio.StreamWriter, http: h11.Connection | None, response: Response
) -> None:
    """Answer and let the caller close: through `http` when it has a request to answer, else
    written plainly (a refusal before any request was read)."""
    closing = Response(
        response.status,
        response.body,
        response.content_type,
        (*response.headers, ("Connection", "close")),
    )
    try:
        data = _raw(closing)
        if http is not None and http.our_state is h11.SEND_RESPONSE:
            with contextlib.suppress(h11.LocalProtocolError):
                data = _serialize(http, closing)
        writer.write(data)
        await writer.drain()
    except ConnectionError:
        pass


def _raw(response: Response) -> bytes:
    """A response written without the connection's state machine (it had no request to answer,
    or could not read it)."""
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        *response.headers,
    ]
    head = f"HTTP/1.1 {response.status} \r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return (head + "\r\n").encode("latin-1") + response.body


async def fetch(
    *,
    host: str = "",
    port: int = 0,
    path: Path | None = None,
    target: str,
    token: str | None = None,
    context: ssl.SSLContext | None = None,
    timeout_s: float = 5.0,
) -> tuple[int, str, bytes]:
    """(status, content type, body) of one `GET target` to an agent's API (TCP or a Unix
    socket): the CLI's client. Raises OSError (or TimeoutError) when nothing answers."""

    async def exchange() -> tuple[int, str, bytes]:
        if path is not None:
            reader, writer = await asyncio.open_unix_connection(str(path))
        else:
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
        http = h11.Connection(h11.CLIENT)
        headers = [("Host", host or "localhost"), ("Accept", "application/json")]
        if token is not None:
            headers.append(("Authorization", f"Bearer {token}"))
        try:
            writer.write(
                http.send(h11.Request(method="GET", target=target, headers=headers)) or b""
            )
            writer.write(http.send(h11.EndOfMessage()) or b"")
            await writer.drain()
            status, kind, parts = 0, "", []
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    http.receive_data(await reader.read(_READ_SIZE))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    kind = dict(event.headers).get(b"content-type", b"").decode("latin-1")
                elif isinstance(event, h11.Data):
                    parts.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return status, kind, b"".join(parts)
        except h11.ProtocolError as exc:
            raise ConnectionError(f"not an HTTP answer: {exc}") from None
        finally:
            writer.close()

    return await asyncio.wait_for(exchange(), timeout_s)
