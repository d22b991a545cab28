"""Reports from instrumented applications and the orchestrator, over a Unix datagram socket.

- `agent.ingest.protocol`: the wire format (docs/ingest-protocol.md) as frozen value types, and
  `parse`, which turns one datagram into one of them or raises `Malformed` with a drop reason.
- `agent.ingest.server`: `IngestServer`, the agent's end of the socket: parses, filters and
  delivers reports, counting every datagram it receives.
- `agent.ingest.client`: the dependency-free client applications import (or copy).

This package imports nothing on purpose: `agent.ingest.client` must load in an application's
interpreter without the agent's dependencies, and importing it runs this file first.
"""
