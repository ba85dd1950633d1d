"""Pure code that engine and history share: parsing and validating workflow specs, the
planner, a run's document and state from its events, the diff of two runs.

No I/O and no clock: imports only ``schemas``, ``projections`` and the base modules, never
``store`` or ``infra``.
"""
