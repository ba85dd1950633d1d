"""JWTs from an identity provider: RS256 keys from a JWKS URL (a tiny JWKS server of the test's own,
whose keys the test rotates), RS256 with a configured public key, and HS256 with a shared secret.

A token is accepted only when its signature, issuer, audience and times check out; its tenant and
scopes come from its claims and its ``sub`` is recorded as the actor (``jwt:<sub>``). Everything
else is a 401 problem: expired, wrong audience or issuer, ``alg: none``, an HS256 token "signed"
with the RSA public key (algorithm confusion), a key the JWKS does not list.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from service.api.auth import JWKS_REFRESH_COOLDOWN_S
from service.config import AuthSettings
from tests.helpers.api import assert_problem, wait_ended
from tests.helpers.servers import Servers
from tests.helpers.serving import serve_app
from tests.helpers.tenants import api_keys, bearer

ISSUER = "https://idp.example.test/"
AUDIENCE = "flowledger-api"
EVERY_SCOPE = "workflows:read workflows:write runs:read runs:write"


@dataclass
class SigningKey:
    kid: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    algorithm: str = "RS256"

    @classmethod
    def rsa(cls, kid: str) -> SigningKey:
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")

    @property
    def public_pem(self) -> str:
        return (
            self.private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    @property
    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def sign(self, claims: dict[str, Any], *, kid: str | None = None) -> str:
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers={"kid": kid or self.kid})


def claims(tenant: str, /, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "sub": "alice",
        "tenant": tenant,
        "scope": EVERY_SCOPE,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
    }
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token built by hand (PyJWT refuses to make these): unsigned when ``hmac_key`` is None."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if hmac_key is None:
        return f"{signing_input}."
    signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


@dataclass
class JwksServer:
    """Serves ``{"keys": keys}`` on 127.0.0.1; counts the fetches."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0
    url: str = ""


@contextlib.contextmanager
def jwks_server(jwks: JwksServer) -> Iterator[JwksServer]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"keys": jwks.keys}).encode()
            jwks.fetches += 1
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="jwks", daemon=True)
    thread.start()
    jwks.url = f"http://127.0.0.1:{server.server_port}/.well-known/jwks.json"
    try:
        yield jwks
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class Idp:
    client: httpx.AsyncClient
    """The service, called with no credential unless a test passes one."""
    jwks: JwksServer
    current: SigningKey
    tenant: str


@pytest.fixture(scope="module")
async def idp(servers: Servers) -> AsyncIterator[Idp]:
    key = SigningKey.rsa("key-1")
    with jwks_server(JwksServer(keys=[key.jwk])) as jwks:
        auth = AuthSettings(jwt_jwks_url=jwks.url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
        async with serve_app(servers, own_database=True, auth=auth) as admin:
            async with httpx.AsyncClient(base_url=admin.base_url, timeout=10) as client:
                client.database_url = admin.database_url  # type: ignore[attr-defined]
                yield Idp(client, jwks, key, f"jwt{uuid.uuid4().hex[:8]}")


def _spec(workflow_id: str) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "nodes": [{"id": "echo", "type": "transform", "config": {"expression": "inputs"}}],
        "edges": [],
    }


async def test_a_valid_rs256_token_acts_as_its_tenant_with_its_scopes(idp: Idp) -> None:
    token = idp.current.sign(claims(idp.tenant))
    wid = f"jwt-{uuid.uuid4().hex[:8]}"
    api = httpx.AsyncClient(base_url=idp.client.base_url, headers=bearer(token), timeout=10)
    async with api:
        assert (await api.post("/v1/workflows", json=_spec(wid))).status_code == 201
        started = await api.post(f"/v1/workflows/{wid}/runs", json={"inputs": {"x": 1}})
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]
        events = await wait_ended(api, run_id)
    queued = events[0]
    assert queued["type"] == "run_queued"
    assert queued["data"]["actor"] == "jwt:alice" and queued["tenant"] == idp.tenant

    # The run is the claim's tenant's: an API key of that tenant sees it, one of another does not.
    database_url: str = idp.client.database_url  # type: ignore[attr-defined]
    same = (await api_keys(database_url, idp.tenant, {"r": ["runs:read"]}))["r"]
    other = (await api_keys(database_url, "someone-else", {"r": ["runs:read"]}))["r"]
    assert (await idp.client.get(f"/v1/runs/{run_id}/events", headers=bearer(same))).status_code == 200
    assert_problem(await idp.client.get(f"/v1/runs/{run_id}/events", headers=bearer(other)), 404)

    # Scopes come from the claim (a space-separated string or a list) and nothing else.
    read_only = idp.current.sign(claims(idp.tenant, scope="workflows:read runs:read"))
    refused = await idp.client.post(f"/v1/workflows/{wid}/runs", json={}, headers=bearer(read_only))
    assert "runs:write" in assert_problem(refused, 403)["detail"]
    as_list = idp.current.sign(claims(idp.tenant, scope=["runs:read"]))
    assert (await idp.client.get(f"/v1/runs/{run_id}", headers=bearer(as_list))).status_code == 200
    no_scope = idp.current.sign(claims(idp.tenant, scope=None))
    assert_problem(await idp.client.get("/v1/runs", headers=bearer(no_scope)), 403)


async def test_tokens_that_do_not_check_out_are_401(idp: Idp, tmp_path: Path) -> None:
    key, tenant = idp.current, idp.tenant
    now = int(time.time())
    rogue = SigningKey.rsa("rogue")
    refused = {
        "expired": key.sign(claims(tenant, iat=now - 7200, exp=now - 3600)),
        "not yet valid": key.sign(claims(tenant, nbf=now + 3600)),
        "wrong audience": key.sign(claims(tenant, aud="another-api")),
        "no audience": key.sign(claims(tenant, aud=None)),
        "wrong issuer": key.sign(claims(tenant, iss="https://evil.example.test/")),
        "no expiry": key.sign(claims(tenant, exp=None)),
        "no subject": key.sign(claims(tenant, sub=None)),
        "no tenant": key.sign(claims(tenant, tenant=None)),
        "alg none": forge({"alg": "none", "typ": "JWT", "kid": key.kid}, claims(tenant), None),
        "alg none without kid": forge({"alg": "none", "typ": "JWT"}, claims(tenant), None),
        # HS/RS confusion: HMAC keyed with the public key the service verifies RS256 with.
        "HS256 with the public key as secret": forge(
            {"alg": "HS256", "typ": "JWT", "kid": key.kid}, claims(tenant), key.public_pem.encode()
        ),
        "a key the JWKS does not list": rogue.sign(claims(tenant)),
        "another key under a listed kid": rogue.sign(claims(tenant), kid=key.kid),
        "a tampered payload": _tamper(key.sign(claims(tenant)), claims(tenant, tenant="victim")),
        "garbage with two dots": "abc.def.ghi",
    }
    for why, token in refused.items():
        answer = await idp.client.get("/v1/runs", headers=bearer(token))
        body = assert_problem(answer, 401)
        assert answer.headers["www-authenticate"].startswith("Bearer"), why
        assert body["detail"], why
    # ... and the good one still passes (the refusals above are about the tokens).
    assert (await idp.client.get("/v1/runs", headers=bearer(key.sign(claims(tenant))))).status_code == 200


def _tamper(token: str, payload: dict[str, Any]) -> str:
    header, _payload, signature = token.split(".")
    return f"{header}.{_b64(json.dumps(payload).encode())}.{signature}"


async def test_a_rotated_key_is_fetched_and_a_removed_one_refused(idp: Idp) -> None:
    old = idp.current
    old_token = old.sign(claims(idp.tenant))
    assert (await idp.client.get("/v1/runs", headers=bearer(old_token))).status_code == 200

    new = SigningKey.rsa("key-2")
    idp.jwks.keys = [new.jwk]  # the provider rotates: the old key is gone from the set
    await asyncio.sleep(JWKS_REFRESH_COOLDOWN_S + 0.2)  # refetches on unknown kids are spaced out
    fetches = idp.jwks.fetches
    new_token = new.sign(claims(idp.tenant))
    answer = await idp.client.get("/v1/runs", headers=bearer(new_token))
    assert answer.status_code == 200, answer.text
    assert idp.jwks.fetches == fetches + 1  # the unknown kid made the service fetch the set again
    # The old key is no longer listed: its tokens are refused from now on (no key outlives the set).
    assert_problem(await idp.client.get("/v1/runs", headers=bearer(old_token)), 401)
    # An ES256 key published later is taken as well.
    es = SigningKey.ec("key-3")
    idp.jwks.keys = [new.jwk, es.jwk]
    await asyncio.sleep(JWKS_REFRESH_COOLDOWN_S + 0.2)
    answer = await idp.client.get("/v1/runs", headers=bearer(es.sign(claims(idp.tenant))))
    assert answer.status_code == 200, answer.text
    idp.current = new


async def test_a_configured_public_key_refuses_hs256_signed_with_it(servers: Servers, tmp_path: Path) -> None:
    key = SigningKey.rsa("pem")
    pem_file = tmp_path / "idp.pem"
    pem_file.write_text(key.public_pem)
    tenant = f"pem{uuid.uuid4().hex[:6]}"
    good = key.sign(claims(tenant))
    confused = forge({"alg": "HS256", "typ": "JWT"}, claims(tenant), key.public_pem.encode())
    confused_stripped = forge({"alg": "HS256", "typ": "JWT"}, claims(tenant), key.public_pem.strip().encode())
    for public_key in (key.public_pem, str(pem_file)):  # inline, or the path of a PEM file
        auth = AuthSettings(jwt_public_key=public_key, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
        async with serve_app(servers, auth=auth) as admin:
            assert (await admin.get("/v1/runs", headers=bearer(good))).status_code == 200
            for token in (confused, confused_stripped):
                assert_problem(await admin.get("/v1/runs", headers=bearer(token)), 401)
            other = SigningKey.rsa("other").sign(claims(tenant))
            assert_problem(await admin.get("/v1/runs", headers=bearer(other)), 401)
            assert (await admin.get("/v1/runs")).status_code == 200  # API keys keep working


async def test_hs256_with_the_shared_secret(servers: Servers) -> None:
    secret = "s3cret-" + "x" * 60
    tenant = f"hs{uuid.uuid4().hex[:6]}"
    rsa_key = SigningKey.rsa("k")
    good = jwt.encode(claims(tenant, sub="bob"), secret, algorithm="HS256")
    wrong = jwt.encode(claims(tenant), "another-secret-" + "y" * 60, algorithm="HS256")
    hs512 = jwt.encode(claims(tenant), secret, algorithm="HS512")
    expired = jwt.encode(claims(tenant, exp=int(time.time()) - 3600), secret, algorithm="HS256")
    unsigned = forge({"alg": "none", "typ": "JWT"}, claims(tenant), None)
    confused = forge({"alg": "HS256", "typ": "JWT"}, claims(tenant), rsa_key.public_pem.encode())
    rs256 = rsa_key.sign(claims(tenant))
    # The secret alone; then the secret beside a public key (each token is checked with its kind of key).
    for public_key in (None, rsa_key.public_pem):
        auth = AuthSettings(
            jwt_secret=secret, jwt_public_key=public_key, jwt_issuer=ISSUER, jwt_audience=AUDIENCE
        )
        async with serve_app(servers, auth=auth) as admin:
            assert (await admin.get("/v1/runs", headers=bearer(good))).status_code == 200
            for token in (wrong, hs512, expired, unsigned, confused):
                assert_problem(await admin.get("/v1/runs", headers=bearer(token)), 401)
            by_rsa = await admin.get("/v1/runs", headers=bearer(rs256))
            if public_key is None:
                assert_problem(by_rsa, 401)
            else:
                assert by_rsa.status_code == 200, by_rsa.text


async def test_a_tenant_claim_that_is_not_a_tenant_id_is_refused(idp: Idp) -> None:
    """The tenant is a NATS subject token (``<prefix>.<tenant>.…``): a claim ``acme.evil`` would
    publish its events where subscribers of tenant ``acme`` are allowed to read."""
    for tenant in ("acme.evil", "acme.>", "*", "", "a b", "x" * 65, "ümlaut"):
        token = idp.current.sign(claims(tenant))
        wid = f"t-{uuid.uuid4().hex[:6]}"
        answer = await idp.client.post("/v1/workflows", json=_spec(wid), headers=bearer(token))
        assert_problem(answer, 401)
