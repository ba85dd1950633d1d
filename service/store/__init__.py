"""Every SQL statement of the service: the event store, the run queue, workflows, checkpoints,
projection positions, read-model queries and metrics. Helpers that run inside a caller's
transaction take the connection and say so in their name (``..._conn`` / ``..._txn``).

May import ``infra`` and the base modules only.
"""
