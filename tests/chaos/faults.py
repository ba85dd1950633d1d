"""The drill's fault plan: which fault, when, on what and for how long, drawn from one seed.

Pure: ``plan_faults`` depends on its arguments only, so a seed names one drill (the same
faults at the same offsets every time; what the service does in between varies with timing).
Faults come one at a time: each starts after the previous one healed plus a random gap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

KILL9 = "kill -9 instance"
PG_STOP = "postgres stop -m immediate"
NATS_NODE = "nats node killed"
NATS_ALL = "nats cluster down"
PROXY_DROP = "proxy drops connections"
PROXY_STALL = "proxy stalls connections"
KINDS = (KILL9, PG_STOP, NATS_NODE, NATS_ALL, PROXY_DROP, PROXY_STALL)

INSTANCES = ("i1", "i2", "i3")
NATS_NODES = ("n1", "n2", "n3")


@dataclass(frozen=True)
class Limits:
    """Ranges (seconds) the plan draws from."""

    gap: tuple[float, float] = (3.0, 10.0)
    kill9_down: tuple[float, float] = (1.0, 8.0)
    pg_down: tuple[float, float] = (5.0, 40.0)
    nats_node_down: tuple[float, float] = (3.0, 15.0)
    nats_all_down: tuple[float, float] = (20.0, 20.0)
    proxy_drop: tuple[float, float] = (0.5, 5.0)
    proxy_stall: tuple[float, float] = (2.0, 12.0)


FULL = Limits()
"""The issue's ranges: PostgreSQL down 5-40 s, the whole NATS cluster 20 s."""

SHORT = Limits(
    gap=(2.0, 4.0),
    kill9_down=(1.0, 3.0),
    pg_down=(5.0, 8.0),
    nats_node_down=(2.0, 5.0),
    nats_all_down=(6.0, 6.0),
    proxy_drop=(0.5, 2.0),
    proxy_stall=(2.0, 7.0),
)
"""The CI form: the same kinds, shorter."""

# Relative frequency of each kind after the first round (which has every kind once).
_WEIGHTS = {KILL9: 4, PG_STOP: 2, NATS_NODE: 3, NATS_ALL: 1, PROXY_DROP: 3, PROXY_STALL: 3}


@dataclass(frozen=True)
class Fault:
    """One planned fault: ``kind`` on ``target`` at ``at`` seconds into the drill, for ``seconds``."""

    at: float
    kind: str
    target: str
    seconds: float


def _seconds(rng: random.Random, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return round(rng.uniform(low, high), 1)


def _target(rng: random.Random, kind: str) -> str:
    if kind == KILL9:
        return rng.choice(INSTANCES)
    if kind == NATS_NODE:
        return rng.choice(NATS_NODES)
    if kind == PG_STOP:
        return "postgres"
    if kind == NATS_ALL:
        return "n1 n2 n3"
    return "proxy"


def _down(rng: random.Random, kind: str, limits: Limits) -> float:
    bounds = {
        KILL9: limits.kill9_down,
        PG_STOP: limits.pg_down,
        NATS_NODE: limits.nats_node_down,
        NATS_ALL: limits.nats_all_down,
        PROXY_DROP: limits.proxy_drop,
        PROXY_STALL: limits.proxy_stall,
    }[kind]
    return _seconds(rng, bounds)


def plan_faults(seed: int, duration: float, limits: Limits = FULL, *, settle: float = 3.0) -> list[Fault]:
    """Faults from ``seed``, one at a time: a first round with every kind once (in a seeded
    order, however short ``duration`` is), then faults drawn by weight while they start within
    ``duration`` seconds. ``settle``: a fault's expected time to heal beyond its down time
    (restarts, elections), used only to space the plan.
    """
    rng = random.Random(seed)
    first_round = list(KINDS)
    rng.shuffle(first_round)
    plan: list[Fault] = []
    at = _seconds(rng, limits.gap)
    kinds, weights = list(_WEIGHTS), list(_WEIGHTS.values())
    while first_round or at < duration:
        kind = first_round.pop(0) if first_round else rng.choices(kinds, weights)[0]
        fault = Fault(at=round(at, 1), kind=kind, target=_target(rng, kind), seconds=_down(rng, kind, limits))
        plan.append(fault)
        at += fault.seconds + settle + _seconds(rng, limits.gap)
    return plan
