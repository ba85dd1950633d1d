"""``flowledger bench push`` at smoke size: both scenarios and the raw NATS baseline, every
client's stream complete, in seq order and free of duplicates."""

from __future__ import annotations

from service.bench.push import bench_push, events_per_run
from service.config import Settings
from tests.helpers.servers import Servers


async def test_bench_push_smoke(servers: Servers) -> None:
    settings = Settings(database_url=servers.database_url, nats_url=servers.nats_url, home=servers.home)
    result = await bench_push(settings, clients=20, runs=2, nodes=4, delay_ms=50)

    assert [s.ours.runs for s in result.scenarios] == [1, 2]
    for scenario in result.scenarios:
        for phase in (scenario.ours, scenario.baseline):
            assert phase is not None
            assert phase.connected == phase.clients == 20, phase.errors
            assert phase.violations.total == 0, f"{scenario.name} {phase.mode}: {phase.violations}"
            assert phase.latencies_ms and phase.p99_ms > 0
        # SSE clients get every stored event of their run (the gate's early ones too, from the log)
        assert scenario.ours.delivered == 20 * events_per_run(4)
        assert scenario.ours.relay_latencies_ms
    assert result.violations == 0
