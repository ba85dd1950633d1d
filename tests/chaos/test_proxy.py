"""The drill's TCP proxy against a real echo server: it forwards, a drop resets open connections
and refuses new ones for a while, a stall holds bytes back and then delivers them all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.helpers.faulty_proxy import FaultyProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[FaultyProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    proxy = await FaultyProxy("127.0.0.1", port).start()
    try:
        yield proxy
    finally:
        await proxy.close()
        server.close()


async def _roundtrip(port: int, payload: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    return reader, writer, await asyncio.wait_for(reader.readexactly(len(payload)), 5)


async def test_forwards_then_a_drop_resets_and_refuses_for_a_while(proxy: FaultyProxy) -> None:
    reader, writer, echoed = await _roundtrip(proxy.port, b"hello")
    assert echoed == b"hello"
    assert proxy.drop(0.5) == 1
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        writer.write(b"more")
        await writer.drain()
        await asyncio.wait_for(reader.readexactly(4), 5)
    writer.close()
    refused_reader, refused = await asyncio.open_connection("127.0.0.1", proxy.port)
    with pytest.raises(ConnectionResetError):  # reset at accept, not an orderly close
        await asyncio.wait_for(refused_reader.read(10), 5)
    refused.close()
    await asyncio.sleep(0.6)
    _, writer, echoed = await _roundtrip(proxy.port, b"again")
    assert echoed == b"again"
    writer.close()


async def test_a_stall_holds_bytes_back_without_losing_them(proxy: FaultyProxy) -> None:
    reader, writer, _ = await _roundtrip(proxy.port, b"warm")
    proxy.stall(60)
    writer.write(b"held")
    await writer.drain()
    with pytest.raises(TimeoutError):  # held by the stall
        await asyncio.wait_for(reader.readexactly(4), 0.5)
    proxy.heal()
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"
    writer.close()
