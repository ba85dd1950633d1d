"""What one caller or request may cost (issue 11): a rate limit per credential (429 with
Retry-After), a body cap (413) and a time limit (503); health and readiness are exempt."""

from __future__ import annotations

from service.config import AuthSettings, RequestLimits
from tests.helpers.servers import Servers
from tests.helpers.serving import api_key, serve_app


async def test_a_credential_over_its_rate_gets_429_with_retry_after_and_others_do_not(
    servers: Servers,
) -> None:
    async with serve_app(servers, auth=AuthSettings(rate_limit_per_minute=5)) as api:
        answers = [(await api.get("/v1/runs")).status_code for _ in range(7)]
        assert answers[:5] == [200] * 5 and answers[5:] == [429, 429]
        limited = await api.get("/v1/runs")
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
        other = f"Bearer {await api_key(api.database_url, 'default', ['runs:read'])}"  # type: ignore[attr-defined]
        assert (await api.get("/v1/runs", headers={"Authorization": other})).status_code == 200
        assert (await api.get("/health")).status_code == 200  # never limited


async def test_a_body_over_the_cap_is_a_413(servers: Servers) -> None:
    async with serve_app(servers, limits=RequestLimits(max_body_bytes=4096)) as api:
        big = {"inputs": {"blob": "x" * 10_000}}
        response = await api.post("/v1/workflows/any/runs", json=big)
        assert response.status_code == 413, response.text


async def test_a_request_over_the_time_limit_is_a_503_problem(servers: Servers) -> None:
    async with serve_app(servers, limits=RequestLimits(timeout_s=0.000001)) as api:
        response = await api.get("/v1/runs")  # it waits on PostgreSQL: far longer than a microsecond
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "took longer than" in response.json()["detail"]
        assert (await api.get("/ready")).status_code == 200
