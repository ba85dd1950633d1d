"""The running Flowledger service, in layers (each imports only the layers below it; the
import-linter contract in ``pyproject.toml`` checks it):

``cli`` -> ``bench`` -> ``api`` -> ``runtime`` -> ``engine`` | ``followers`` | ``history`` ->
``domain`` -> ``store`` -> ``infra`` -> ``config`` | ``logs`` | ``retry`` | ``urls`` | ``waiting``.

Every layer may import ``schemas`` (the contract) and ``projections`` (the read-model folds).
"""
