"""The ``flowledger`` command (click): ``main`` is the root group, ``_common`` what every command
shares, one module per verb group.

May import anything below it (bench only lazily, inside the ``bench`` command). No module
here imports ``main``: commands take their helpers from ``_common``.
"""
