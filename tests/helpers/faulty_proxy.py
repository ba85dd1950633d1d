"""A TCP proxy that can drop and stall connections: a service reaches PostgreSQL through it, so a
test (or the chaos drill) can break that service's database connections without touching others.

* ``drop(seconds)`` resets every open connection (both sides, SO_LINGER 0: the peers see a
  reset, not an orderly close) and resets new ones at accept for ``seconds``;
* ``stall(seconds)`` stops moving bytes, both ways, on every connection (open or new) for
  ``seconds``; nothing is lost, it is delivered late. A stall longer than the lease lets
  another worker take over a run the stalled instance still believes it holds.

It runs on the caller's event loop; every socket it opened is closed by ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time

_CHUNK = 65536


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER on, timeout 0), as a crashed peer or network would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultyProxy:
    """``127.0.0.1:<port>`` forwarding to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._refuse_until = 0.0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._resume: asyncio.TimerHandle | None = None
        self.connections = 0
        """Connections accepted so far (a figure for the report)."""

    async def start(self, port: int = 0) -> FaultyProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def drop(self, seconds: float) -> int:
        """Reset every open connection and refuse new ones for ``seconds``; returns how many were reset."""
        self._refuse_until = time.monotonic() + seconds
        pairs, self._pairs = self._pairs, set()
        for client, upstream in pairs:
            _reset(client)
            _reset(upstream)
        return len(pairs)

    def stall(self, seconds: float) -> None:
        """Stop forwarding on every connection for ``seconds`` (bytes wait, none are lost)."""
        self._flowing.clear()
        if self._resume is not None:
            self._resume.cancel()
        self._resume = asyncio.get_running_loop().call_later(seconds, self._flowing.set)

    def heal(self) -> None:
        """Forward normally again at once."""
        self._refuse_until = 0.0
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self._flowing.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.heal()
        self.drop(0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _accept(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        self.connections += 1
        if time.monotonic() < self._refuse_until:
            _reset(client)
            return
        await self._flowing.wait()
        try:
            upstream_reader, upstream = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(client)  # the database is down: the client sees what it would see directly
            return
        pair = (client, upstream)
        self._pairs.add(pair)
        pumps = [
            asyncio.create_task(self._pump(client_reader, upstream)),
            asyncio.create_task(self._pump(upstream_reader, client)),
        ]
        self._tasks.update(pumps)
        try:
            # One side ending (EOF, reset, drop) ends both: a half-open proxy would hide the failure.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            if pair in self._pairs:
                self._pairs.discard(pair)
                client.transport.abort()
                upstream.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    return
                await self._flowing.wait()  # a stall holds the bytes here
                if writer.is_closing():
                    return
                writer.write(data)
                await writer.drain()
