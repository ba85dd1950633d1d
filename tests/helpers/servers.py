"""What the session fixtures in ``tests/conftest.py`` hand out: the servers, and a stream of one test's own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Servers:
    """The PostgreSQL and NATS every integration test of the session talks to (fixture ``servers``)."""

    database_url: str
    nats_url: str
    home: Path


@dataclass
class StreamTarget:
    """A JetStream stream of one test's own (name and subject prefix; fixture ``stream``)."""

    name: str
    subject_prefix: str
