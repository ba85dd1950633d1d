"""The http node's egress policy (pure): rules, their order, the defaults, and the messages."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.engine.nodes.egress import EgressPolicy, is_loopback_bind, parse_rule, parse_rules


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def policy(allow: str = "", deny: str = "", *, bound: str = "127.0.0.1") -> EgressPolicy:
    """Rules as FLOWLEDGER_HTTP_ALLOW / _DENY give them: comma- or space-separated."""
    return EgressPolicy.from_settings(parse_rules(allow), parse_rules(deny), service_host=bound)


@pytest.mark.parametrize(
    ("bound", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.1.2.3", False),
        ("api.internal", False),
    ],
)
def test_loopback_is_allowed_by_default_only_when_the_service_is_bound_to_loopback(
    bound: str, loopback: bool
) -> None:
    assert is_loopback_bind(bound) is loopback
    reason = policy(bound=bound).check("127.0.0.1", ip("127.0.0.1"))
    if loopback:
        assert reason is None
    else:
        assert reason == (
            "127.0.0.1 is a loopback address, denied by default because the service is not bound to "
            "loopback (an address or CIDR entry in FLOWLEDGER_HTTP_ALLOW allows it)"
        )
    assert (policy(bound=bound).check("localhost", ip("::1")) is None) is loopback
    assert (policy(bound=bound).check("x", ip("0.0.0.0")) is None) is loopback  # 0.0.0.0 reaches this host


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "169.254.0.1",
        "fe80::1",
        "fd00:ec2::254",
        "100.100.100.200",
        "168.63.129.16",
        "::ffff:169.254.169.254",
    ],
)
def test_link_local_and_cloud_metadata_addresses_are_denied_by_default(address: str) -> None:
    reason = policy().check("metadata.internal", ip(address))
    assert reason is not None
    assert "is a link-local or cloud metadata address, denied by default" in reason
    assert reason.startswith("metadata.internal (")


def test_public_addresses_are_allowed_with_no_rules() -> None:
    assert policy().check("example.com", ip("93.184.215.14")) is None
    assert policy().check("example.com", ip("2606:2800:21f:cb07:6820:80da:af6b:8b2c")) is None
    assert policy().check("10.0.0.5", ip("10.0.0.5")) is None  # private ranges are not denied by default


def test_deny_rules_by_host_and_by_cidr_name_the_entry() -> None:
    p = policy(deny="evil.example.com, *.corp.internal 10.0.0.0/8 127.0.0.1")
    assert p.check("evil.example.com", ip("93.184.215.14")) == (
        "evil.example.com (93.184.215.14) matches FLOWLEDGER_HTTP_DENY entry 'evil.example.com'"
    )
    assert (
        p.check("EVIL.example.com.", ip("1.2.3.4")) is not None
    )  # names compare case- and dot-insensitively
    assert p.check("db.corp.internal", ip("1.2.3.4")) == (
        "db.corp.internal (1.2.3.4) matches FLOWLEDGER_HTTP_DENY entry '*.corp.internal'"
    )
    assert p.check("corp.internal", ip("1.2.3.4")) is None  # "*." is for subdomains only
    assert (
        p.check("intranet", ip("10.20.30.40"))
        == "intranet (10.20.30.40) matches FLOWLEDGER_HTTP_DENY entry '10.0.0.0/8'"
    )
    assert p.check("127.0.0.1", ip("127.0.0.1")) == "127.0.0.1 matches FLOWLEDGER_HTTP_DENY entry '127.0.0.1'"
    assert p.check("127.0.0.2", ip("127.0.0.2")) is None  # the rest of loopback stays allowed (bound to it)


def test_an_allow_list_is_the_whole_list() -> None:
    p = policy(allow="api.example.com, 203.0.113.0/24")
    assert p.check("api.example.com", ip("93.184.215.14")) is None
    assert p.check("other.example.com", ip("203.0.113.7")) is None
    assert p.check("other.example.com", ip("93.184.215.14")) == (
        "other.example.com (93.184.215.14) matches no FLOWLEDGER_HTTP_ALLOW entry"
    )
    assert p.check("127.0.0.1", ip("127.0.0.1")) == "127.0.0.1 matches no FLOWLEDGER_HTTP_ALLOW entry"


def test_only_an_address_allow_rule_lifts_a_default_deny() -> None:
    by_name = policy(allow="metadata.google.internal")
    assert "denied by default" in (by_name.check("metadata.google.internal", ip("169.254.169.254")) or "")
    by_address = policy(allow="169.254.169.254")
    assert by_address.check("metadata.google.internal", ip("169.254.169.254")) is None
    assert policy(allow="127.0.0.0/8", bound="0.0.0.0").check("127.0.0.1", ip("127.0.0.1")) is None


def test_deny_wins_over_allow() -> None:
    p = policy(allow="10.0.0.0/8", deny="10.9.0.0/16")
    assert p.check("a", ip("10.1.1.1")) is None
    assert p.check("b", ip("10.9.1.1")) == "b (10.9.1.1) matches FLOWLEDGER_HTTP_DENY entry '10.9.0.0/16'"


def test_ipv4_mapped_addresses_are_checked_as_ipv4() -> None:
    p = policy(deny="192.0.2.0/24")
    assert (
        p.check("x", ip("::ffff:192.0.2.1"))
        == "x (192.0.2.1) matches FLOWLEDGER_HTTP_DENY entry '192.0.2.0/24'"
    )


def test_rules_parse_or_name_the_bad_entry() -> None:
    assert parse_rule("10.0.0.0/8").network == ipaddress.ip_network("10.0.0.0/8")
    assert parse_rule("10.1.2.3/8").network == ipaddress.ip_network("10.0.0.0/8")  # host bits ignored
    assert parse_rule("[::1]").network == ipaddress.ip_network("::1/128")
    assert parse_rule("API.Example.com.").host == "api.example.com"
    assert parse_rule("*.example.com").host == "*.example.com"
    assert parse_rules("a.com, b.com  c.com,,") == (
        parse_rule("a.com"),
        parse_rule("b.com"),
        parse_rule("c.com"),
    )
    for bad in ("http://a.com", "a.com/path", "10.0.0.0/33", "*", "a..com", "exa mple.com"):
        with pytest.raises(ValueError, match="is not a host name"):
            parse_rule(bad)


@given(st.ip_addresses())
def test_every_address_gets_a_decision_and_denials_say_why(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    for p in (policy(), policy(bound="0.0.0.0"), policy(allow="example.com"), policy(deny="0.0.0.0/0, ::/0")):
        reason = p.check("host.test", address)
        assert reason is None or "host.test" in reason
    assert policy(deny="0.0.0.0/0, ::/0").check("host.test", address) is not None
