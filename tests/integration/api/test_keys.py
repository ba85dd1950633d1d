"""API keys as an operator manages them (issue 11): `keys create` prints the token once, `keys list`
never shows a secret but shows the last use, `keys revoke` takes effect at once on every instance
(verified keys are cached, and a revocation's NOTIFY drops them), an expired key is refused."""

from __future__ import annotations

import asyncio
import json
import os
import time

from tests.helpers.paths import FLOWLEDGER
from tests.helpers.servers import Servers
from tests.helpers.serving import serve_app


async def _keys(servers: Servers, database_url: str, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLEDGER_")}
    env.update(FLOWLEDGER_DATABASE_URL=database_url, FLOWLEDGER_HOME=str(servers.home))
    proc = await asyncio.create_subprocess_exec(
        FLOWLEDGER, "keys", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_create_list_use_and_revoke_a_key_across_two_instances(servers: Servers) -> None:
    async with serve_app(servers, own_database=True) as a:
        database_url = a.database_url  # type: ignore[attr-defined]
        async with serve_app(servers, database_url=database_url) as b:
            code, token, err = await _keys(
                servers, database_url, "create", "--tenant", "acme", "--scope", "runs:read"
            )
            assert code == 0, err
            token = token.strip()
            assert token.startswith("flk_") and "shown only now" in err
            key_id = token.split("_")[1]
            headers = {"Authorization": f"Bearer {token}"}
            for api in (a, b):  # each instance verifies it once, then trusts its cache
                assert (await api.get("/v1/runs", headers=headers)).status_code == 200
                assert (await api.get("/v1/runs", headers=headers)).status_code == 200

            code, listed, _ = await _keys(
                servers, database_url, "list", "--tenant", "acme", "--format", "json"
            )
            (row,) = json.loads(listed)
            assert row["key_id"] == key_id and row["scopes"] == ["runs:read"] and row["state"] == "active"
            assert row["created_by"].startswith("cli:") and row["last_used_at"] is not None
            assert token.split("_", 2)[2] not in listed  # never the secret

            code, _out, err = await _keys(servers, database_url, "revoke", key_id)
            assert code == 0, err
            deadline = time.monotonic() + 2.0
            for api in (a, b):
                while (status := (await api.get("/v1/runs", headers=headers)).status_code) == 200:
                    assert time.monotonic() < deadline, (
                        "a revoked key still works (a cached key was not dropped)"
                    )
                    await asyncio.sleep(0.02)
                assert status == 401
                assert "revoked" in (await api.get("/v1/runs", headers=headers)).json()["detail"]


async def test_an_expired_key_is_refused(servers: Servers) -> None:
    async with serve_app(servers, own_database=True) as api:
        database_url = api.database_url  # type: ignore[attr-defined]
        code, token, err = await _keys(
            servers, database_url, "create", "--tenant", "t1", "--scope", "runs:read", "--expires", "1s"
        )
        assert code == 0, err
        await asyncio.sleep(1.2)
        answer = await api.get("/v1/runs", headers={"Authorization": f"Bearer {token.strip()}"})
        assert answer.status_code == 401 and "expired" in answer.json()["detail"]
        code, _o, err = await _keys(
            servers, database_url, "create", "--tenant", "bad.tenant", "--scope", "runs:read"
        )
        assert code == 2 and "tenant" in err
