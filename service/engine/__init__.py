"""Executing runs: the worker claims runs, one executor drives each, ``nodes`` holds the node
types, ``fork`` starts forks, ``control`` appends commands (cancel) to existing runs.

May import ``domain``, ``store``, ``infra`` and the base modules; never ``followers`` or
``history`` (siblings), nor anything above.
"""
