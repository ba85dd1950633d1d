"""The running Flowledger service: event store, relay, HTTP API, CLI, embedded servers."""
