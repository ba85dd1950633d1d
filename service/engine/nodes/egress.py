"""Where the ``http`` node may connect: the egress policy (pure; no I/O).

Rules are host names (``api.example.com``, or ``*.example.com`` for its subdomains) and IP
addresses or CIDR blocks (``10.0.0.0/8``, ``2001:db8::/32``), from ``FLOWLEDGER_HTTP_ALLOW``
and ``FLOWLEDGER_HTTP_DENY``. A connection is checked on the *address* it is about to be
made to, with the host name it was resolved from (see ``http_transport``), in this order:

1. a deny rule matching the host name or the address: denied;
2. an allow rule that is an address or CIDR containing the address: allowed;
3. a link-local or cloud metadata address (169.254.0.0/16, fe80::/10, fd00:ec2::254,
   100.100.100.200, 168.63.129.16): denied by default;
4. a loopback address (127.0.0.0/8, ::1, and 0.0.0.0 / :: which reach it): denied unless
   the service itself is bound to loopback;
5. an allow rule matching the host name: allowed;
6. any allow rule at all: denied (the allow list is then the whole list); none: allowed.

A host-name allow rule does not lift the defaults of 3 and 4, because DNS decides where a
name points: only an address or CIDR allow rule does. IPv4-mapped IPv6 addresses
(``::ffff:169.254.169.254``) are checked as the IPv4 address they are.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from service.config import ENV_HTTP_ALLOW, ENV_HTTP_DENY

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LINK_LOCAL_AND_METADATA: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # IPv4 link-local; 169.254.169.254 is AWS, GCP, Azure and OpenStack metadata
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "168.63.129.16/32",  # Azure WireServer
    )
)
LOOPBACK: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "::1/128",
        "0.0.0.0/32",  # connecting to the unspecified address reaches this host
        "::/128",
    )
)

_HOST_NAME = re.compile(r"^(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")


@dataclass(frozen=True)
class Rule:
    """One allow or deny entry: an address/CIDR block, or a host name (``*.`` for subdomains)."""

    text: str
    network: IPNetwork | None = None
    host: str | None = None

    def matches_host(self, host: str) -> bool:
        if self.host is None:
            return False
        host = host.lower().rstrip(".")
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host

    def matches_address(self, address: IPAddress) -> bool:
        return (
            self.network is not None and address.version == self.network.version and address in self.network
        )


def parse_rule(entry: str) -> Rule:
    """A rule from its text; ``ValueError`` naming the entry when it is neither an address, a
    CIDR block nor a host name."""
    text = entry.strip()
    try:
        return Rule(text, network=ipaddress.ip_network(text.strip("[]"), strict=False))
    except ValueError:
        pass
    host = text.lower().rstrip(".")
    if not _HOST_NAME.match(host):
        raise ValueError(
            f"{entry!r} is not a host name (example.com, *.example.com), an IP address or a CIDR block"
        )
    return Rule(text, host=host)


def parse_rules(entries: Iterable[str | Rule] | str) -> tuple[Rule, ...]:
    """Rules from entries (texts or rules), or from one comma- or space-separated string, as
    FLOWLEDGER_HTTP_ALLOW and _DENY give them (empty entries ignored)."""
    if isinstance(entries, str):
        entries = re.split(r"[,\s]+", entries)
    return tuple(
        e if isinstance(e, Rule) else parse_rule(e) for e in entries if isinstance(e, Rule) or e.strip()
    )


def plain_address(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address as the IPv4 address it stands for."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_loopback_bind(host: str) -> bool:
    """True when a service bound to ``host`` is reachable only from this machine."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return plain_address(ipaddress.ip_address(host)).is_loopback
    except ValueError:
        return False  # a wildcard ("", 0.0.0.0, ::) or a host name: reachable from elsewhere


@dataclass(frozen=True)
class EgressPolicy:
    """Allow and deny rules, and whether loopback is allowed when no rule names it."""

    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    loopback_allowed: bool = True

    @classmethod
    def from_settings(
        cls, allow: Iterable[str | Rule], deny: Iterable[str | Rule], *, service_host: str
    ) -> EgressPolicy:
        """The policy of a service bound to ``service_host``: loopback is allowed by default only
        when that is a loopback address. ``ValueError`` for an entry that is not a rule."""
        return cls(parse_rules(allow), parse_rules(deny), loopback_allowed=is_loopback_bind(service_host))

    def check(self, host: str, address: IPAddress) -> str | None:
        """None when connecting to ``address`` (resolved from ``host``) is allowed; else why not,
        naming the rule."""
        address = plain_address(address)
        at = host if host == str(address) else f"{host} ({address})"
        for rule in self.deny:
            if rule.matches_host(host) or rule.matches_address(address):
                return f"{at} matches {ENV_HTTP_DENY} entry {rule.text!r}"
        if any(rule.matches_address(address) for rule in self.allow):
            return None
        if any(address in net for net in LINK_LOCAL_AND_METADATA if net.version == address.version):
            return (
                f"{at} is a link-local or cloud metadata address, denied by default "
                f"(an address or CIDR entry in {ENV_HTTP_ALLOW} allows it)"
            )
        if not self.loopback_allowed and any(
            address in net for net in LOOPBACK if net.version == address.version
        ):
            return (
                f"{at} is a loopback address, denied by default because the service is not bound "
                f"to loopback (an address or CIDR entry in {ENV_HTTP_ALLOW} allows it)"
            )
        if any(rule.matches_host(host) for rule in self.allow):
            return None
        if self.allow:
            return f"{at} matches no {ENV_HTTP_ALLOW} entry"
        return None
