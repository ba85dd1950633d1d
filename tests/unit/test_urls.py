"""Connection URLs are printed without any of their secrets."""

from __future__ import annotations

import pytest

from service.urls import mask_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://alice:s3cr3t@127.0.0.1:5432/db", "postgresql://alice:***@127.0.0.1:5432/db"),
        ("postgresql://alice@127.0.0.1/db", "postgresql://alice@127.0.0.1/db"),
        ("postgres://127.0.0.1:1/x?password=pw2", "postgres://127.0.0.1:1/x?password=***"),
        (
            "postgres://h/x?sslmode=require&sslpassword=pw&application_name=a",
            "postgres://h/x?sslmode=require&sslpassword=***&application_name=a",
        ),
        ("nats://tok3nSECRET@127.0.0.1:1", "nats://***@127.0.0.1:1"),
        ("nats://bob:hunter2@127.0.0.1:4222", "nats://bob:***@127.0.0.1:4222"),
        (
            "nats://127.0.0.1:1,nats://u:pw9@127.0.0.1:2",
            "nats://127.0.0.1:1,nats://u:***@127.0.0.1:2",
        ),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("postgresql://u:p@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
        ("postgresql://u:p@h:notaport/db", "<unparseable URL>"),
    ],
)
def test_secrets_are_masked(url: str, shown: str) -> None:
    assert mask_url(url) == shown
    for secret in ("s3cr3t", "pw2", "tok3nSECRET", "hunter2", "pw9"):
        assert secret not in mask_url(url)
