"""The HTTP API (Litestar): ``app`` builds it, ``errors`` turns every error into problem details,
``dependencies`` provides the runtime, one module per route group.

May import ``service.runtime`` and everything below it; never the CLI.
"""
