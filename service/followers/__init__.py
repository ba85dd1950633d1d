"""Readers that tail the log: the relay (log -> NATS), the projection service (log -> read
models), push (NATS -> SSE/WebSocket clients) and republish.

May import ``domain``, ``store``, ``infra`` and the base modules; never ``engine`` or
``history`` (siblings), nor anything above.
"""
