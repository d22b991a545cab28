"""The API as a pipeline stage: the listener `api.listen` names, serving `QueryApi`."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from agent.config import parse_listen
from agent.runtime.httpd import HttpServer, Limits

if TYPE_CHECKING:
    from agent.config import Api
    from agent.serve.api import QueryApi

_log = logging.getLogger(__name__)


def server_context(config: Api) -> ssl.SSLContext | None:
    """TLS for the listener: the server's certificate, and clients' checked against ca_file."""
    tls = config.tls
    if not tls.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    assert tls.cert_file is not None  # noqa: S101 - the config's validator requires both
    assert tls.key_file is not None  # noqa: S101
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.ca_file is not None:
        context.load_verify_locations(tls.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class ApiServer:
    name = "api"

    def __init__(self, config: Api, api: QueryApi, limits: Limits | None = None) -> None:
        self._config = config
        self._api = api
        self._limits = limits
        self.server: HttpServer | None = None

    async def run(self) -> None:
        """Listen, serve until cancelled, and close the listener."""
        config = self._config
        token = None
        if config.token_file is not None:
            text = await asyncio.to_thread(config.token_file.read_text, encoding="utf-8")
            token = text.strip()
            if not token:
                _log.error("api.token_file %s is empty: the API stays closed", config.token_file)
                return
        server = self.server = HttpServer(self._api.handle, limits=self._limits, token=token)
        where = parse_listen(config.listen)
        if where.path is not None:
            await server.listen_unix(where.path)
        else:
            await server.listen_tcp(where.host, where.port, server_context(config))
        _log.info("API listening on %s", config.listen)
        try:
            await asyncio.Event().wait()
        finally:
            await server.close()
