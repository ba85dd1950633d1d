"""Looking back at runs: the audit of hash chains and histories, bundles (export, offline
verification, import) and time travel.

May import ``domain``, ``store``, ``infra`` and the base modules; never ``engine`` or
``followers`` (siblings), nor anything above.
"""
