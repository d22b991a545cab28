"""The API's HTTP server on real loopback sockets: limits, deadlines, methods, access."""

from __future__ import annotations

import asyncio
import http.client
import time
from collections.abc import AsyncIterator

import pytest

from agent.runtime.httpd import HttpServer, Limits, Request, Response, json_response

pytestmark = pytest.mark.integration


async def echo(request: Request) -> Response:
    if request.path == "/slow":
        await asyncio.sleep(5)
    return json_response(
        {"path": request.path, "query": {k: list(v) for k, v in request.query.items()}}
    )


@pytest.fixture
async def server() -> AsyncIterator[tuple[HttpServer, int]]:
    limits = Limits(max_connections=4, head_timeout_s=0.5, handler_timeout_s=0.5, idle_timeout_s=1)
    server = HttpServer(echo, limits=limits)
    await server.listen_tcp("127.0.0.1", 0, None)
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    yield server, port
    await server.close()


def request(
    port: int, method: str, target: str, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, target, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


async def call(
    port: int, method: str, target: str, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(request, port, method, target, **headers)


async def test_get_head_and_the_methods_refused(server: tuple[HttpServer, int]) -> None:
    _, port = server
    status, headers, body = await call(port, "GET", "/a%20b?x=1&x=2,3&empty=")
    assert status == 200
    assert body == b'{"path":"/a b","query":{"x":["1","2,3"],"empty":[""]}}'
    assert headers["Content-Type"] == "application/json"
    status, headers, body = await call(port, "HEAD", "/a")
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) > 0
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, body = await call(port, method, "/a")
        assert status == 405
        assert headers["Allow"] == "GET, HEAD"
        assert headers["Content-Type"] == "application/problem+json"


async def test_a_handler_past_its_deadline_is_503_and_keep_alive_works(
    server: tuple[HttpServer, int],
) -> None:
    _, port = server
    started = time.monotonic()
    status, _, body = await call(port, "GET", "/slow")
    assert status == 503
    assert b"Deadline exceeded" in body
    assert time.monotonic() - started < 2

    def two_on_one_connection() -> list[int]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        statuses = []
        for _ in range(2):
            connection.request("GET", "/x")
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        connection.close()
        return statuses

    assert await asyncio.to_thread(two_on_one_connection) == [200, 200]


async def test_a_huge_body_is_refused_unread_and_a_slow_loris_cut_off(
    server: tuple[HttpServer, int],
) -> None:
    httpd, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10485760\r\n\r\n" + b"x" * 65536)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 413")
    writer.close()
    # A client sending its head a byte at a time never completes it within the deadline.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    closed = False
    for byte in b"GET /x HTTP/1.1\r\nHost: slow\r\n":
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            closed = True
            break
        await asyncio.sleep(0.05)
        if reader.at_eof():
            closed = True
            break
    rest = await asyncio.wait_for(reader.read(), 5)
    assert closed or rest == b""
    assert time.monotonic() - started < 3
    assert httpd.stats.refused["body"] == 1
    assert httpd.stats.refused["slow_head"] == 1
    # The server still answers.
    assert (await call(port, "GET", "/x"))[0] == 200


async def test_connections_beyond_the_limit_get_503(server: tuple[HttpServer, int]) -> None:
    httpd, port = server
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
    await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 503")
    writer.close()
    for _, idle_writer in idle:
        idle_writer.close()
    assert httpd.stats.refused["busy"] == 1


async def test_a_head_too_large_is_431() -> None:
    server = HttpServer(echo, limits=Limits(max_head_bytes=1024))
    await server.listen_tcp("127.0.0.1", 0, None)
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        status, _, _ = await call(port, "GET", "/x", **{"X-Big": "y" * 4096})
        assert status == 431
    finally:
        await server.close()


async def test_a_bearer_token_is_required_when_configured() -> None:
    server = HttpServer(echo, token="s3cret")  # noqa: S106 - a test token
    await server.listen_tcp("127.0.0.1", 0, None)
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        status, headers, _ = await call(port, "GET", "/x")
        assert status == 401
        assert headers["WWW-Authenticate"] == "Bearer"
        assert (await call(port, "GET", "/x", Authorization="Bearer wrong"))[0] == 401
        assert (await call(port, "GET", "/x", Authorization="Bearer s3cret"))[0] == 200
    finally:
        await server.close()
