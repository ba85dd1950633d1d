"""The HTTP transport of the registry's shared client: it connects only where the egress
policy (``egress.py``) allows.

The check is made where the connection is made, on the address connected to: the host is
resolved (``loop.getaddrinfo``), *every* address it resolves to is checked (one denied
address refuses the host, so a name that mixes public and internal answers cannot be used
to pick one), and the socket is opened to a checked address, never to the name again. A
check before the request followed by httpx's own resolution would leave a window for DNS
rebinding (a name answering a public address to the check and 169.254.169.254 to the
connect); checking in an event hook would come after the request was sent. Because every
connection goes through here, every redirect hop is checked too, and a pooled connection
is only ever reused for the origin (scheme, host, port) it was checked for. TLS still
verifies the certificate against the host *name* (httpcore passes the origin's host as
server_hostname).

Proxies from the environment are ignored (the client is built with ``trust_env=False``):
through a proxy, the address connected to would be the proxy's, not the destination's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import typing

import httpcore
import httpx

from service.engine.nodes.egress import EgressPolicy


class EgressDenied(Exception):
    """A connection the egress policy refused: ``host``, ``port`` and why (naming the rule)."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"refused to connect to {host}:{port}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the policy allows."""

    def __init__(self, policy: EgressPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolve(host, port, timeout)
        for address in addresses:
            reason = self._policy.check(host, address)
            if reason is not None:
                raise EgressDenied(host, port, reason)
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc  # try the next address, as a resolver-driven connect would
        assert error is not None
        raise error

    async def _resolve(
        self, host: str, port: int, timeout: float | None
    ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:  # socket.gaierror: no such host, resolver down
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        for _family, _type, _proto, _canonical, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])  # drop an IPv6 zone
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolved to no address")
        return addresses

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise EgressDenied(path, 0, "unix sockets are not reachable from the http node")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with a connection pool whose network backend checks every address."""

    def __init__(self, policy: EgressPolicy, *, limits: httpx.Limits | None = None) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        super().__init__(trust_env=False, limits=limits)
        # AsyncHTTPTransport takes no network backend, but delegates every request to its
        # httpcore pool: the same pool, made with ours. (tests/integration/engine/
        # test_http_egress.py fails if an httpx upgrade stops routing connections through it.)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_CheckedBackend(policy),
        )


def checked_client(policy: EgressPolicy) -> httpx.AsyncClient:
    """An httpx client that follows redirects and connects only where ``policy`` allows."""
    return httpx.AsyncClient(follow_redirects=True, transport=CheckedTransport(policy), trust_env=False)
