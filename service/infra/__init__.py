"""Connections to the outside: PostgreSQL pools and the one classification of driver errors
(``db``), a LISTEN that outlives its session (``listen``), migrations, NATS (``nats``: connect,
the stream, subjects and headers) and the embedded default servers (``embedded``).

May import the base modules only.
"""
