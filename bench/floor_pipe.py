"""The floor of a Python sidecar's per-delta cost: a uvloop TCP pipe that forwards bytes both ways, no HTTP.

``bench/proxy.py`` runs it as a contender pinned like the sidecars, so the "µs CPU per delta" target can be read
against what one upstream read and one client write cost on the same machine in the same run (one epoll wakeup, one
``read``, one ``write`` per token at 5 ms/token). Usage: ``python bench/floor_pipe.py PORT UPSTREAM_PORT``;
``GET /readyz`` is answered locally (for the bench's readiness poll), everything else goes to ``127.0.0.1:UPSTREAM_PORT``.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

READY = b"GET /readyz "
READY_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


class _Upstream(asyncio.Protocol):
    """The upstream side of one connection: bytes from the upstream go straight to the client's transport."""

    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Client(asyncio.Protocol):
    """The client side: the upstream connection opens on the first bytes; until then they are buffered."""

    def __init__(self, upstream_port: int) -> None:
        self.port = upstream_port
        self.transport: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's TCPTransport: a Transport in all but name)

    def data_received(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.write(data)
            return
        if not self.pending and data.startswith(READY) and self.transport is not None:
            self.transport.write(READY_ANSWER)
            self.transport.close()
            return
        self.pending.append(data)
        if len(self.pending) == 1:
            asyncio.ensure_future(self._open())

    async def _open(self) -> None:
        client = self.transport
        if client is None:
            return
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(lambda: _Upstream(client), "127.0.0.1", self.port)
        self.upstream = transport
        for data in self.pending:
            transport.write(data)
        self.pending.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


def main() -> None:
    port, upstream_port = int(sys.argv[1]), int(sys.argv[2])
    loop = uvloop.new_event_loop()
    loop.run_until_complete(loop.create_server(lambda: _Client(upstream_port), "127.0.0.1", port))
    loop.run_forever()


if __name__ == "__main__":
    main()
