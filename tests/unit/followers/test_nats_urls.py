"""``FLOWLEDGER_NATS_URL``: one URL or a cluster's comma-separated seed list; a malformed entry is
named in one line (its secrets masked), never passed on to nats-py."""

from __future__ import annotations

import pytest

from service.config import ENV_NATS_REPLICAS, Settings
from service.infra.nats import InvalidNatsUrl, parse_nats_servers, stream_config


@pytest.mark.parametrize(
    ("url", "servers"),
    [
        ("nats://127.0.0.1:4222", ["nats://127.0.0.1:4222"]),
        (
            "nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224",
            ["nats://127.0.0.1:14222", "nats://127.0.0.1:14223", "nats://127.0.0.1:14224"],
        ),
        (" nats://a:1 , tls://b:2 ", ["nats://a:1", "tls://b:2"]),
        ("n1.internal:4222,n2.internal", ["nats://n1.internal:4222", "nats://n2.internal"]),
        ("nats://u:pw@[::1]:4222", ["nats://u:pw@[::1]:4222"]),
        ("ws://a:8080,wss://b:443", ["ws://a:8080", "wss://b:443"]),
    ],
)
def test_seed_lists_are_split_and_normalised(url: str, servers: list[str]) -> None:
    assert parse_nats_servers(url) == servers


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("nats://a:4222,,nats://b:4222", "entry 2 of 3 is empty"),
        ("nats://a:4222,", "entry 2 of 2 is empty"),
        ("nats://a:4222,nats://b:notaport", "(entry 2 of 2): Port could not be cast"),
        ("nats://a:4222,http://b:4222", "scheme 'http' is not one of nats://"),
        ("nats://a:99999", "out of range"),
        ("nats://:4222", "no host"),
        ("nats://a:4222/path", "no path"),
        ("nats://a:1,ws://b:2", "cannot be mixed"),
    ],
)
def test_a_malformed_entry_is_named(url: str, says: str) -> None:
    with pytest.raises(InvalidNatsUrl) as caught:
        parse_nats_servers(url)
    message = str(caught.value)
    assert says in message
    assert "expected nats://host:port" in message or "cannot be mixed" in message
    assert "\n" not in message


def test_a_malformed_list_never_shows_a_password() -> None:
    with pytest.raises(InvalidNatsUrl) as caught:
        parse_nats_servers("nats://bob:hunter2@a:4222,,nats://b:1")
    assert "hunter2" not in str(caught.value)
    assert "bob:***@a:4222" in str(caught.value)


def test_replicas_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_NATS_REPLICAS, raising=False)
    assert Settings.from_env().nats_replicas is None  # unset: an existing stream keeps its count
    monkeypatch.setenv(ENV_NATS_REPLICAS, "3")
    assert Settings.from_env().nats_replicas == 3
    assert stream_config("S", "s.events", replicas=3).num_replicas == 3
    assert stream_config("S", "s.events", replicas=None).num_replicas is None
    for bad in (0, 6):
        with pytest.raises(ValueError, match=r"replicas must be 1\.\.5"):
            stream_config("S", "s.events", replicas=bad)
