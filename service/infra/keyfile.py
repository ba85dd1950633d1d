"""Files of credentials under the home. The service's secret-encryption key: from ``FLOWLEDGER_SECRET_KEY``, else a file under the home
(created once, mode 0600). Losing it makes the stored secrets unreadable: back it up."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet

KEY_FILE = "secret.key"


class SecretKeyError(RuntimeError):
    """The configured key is not a Fernet key, or the key file cannot be read or written."""


def load_secret_key(configured: str | None, home: Path) -> bytes:
    """The Fernet key: ``configured`` (urlsafe base64 of 32 bytes) or ``home/secret.key``."""
    if configured:
        key = configured.strip().encode()
        _check(key, "FLOWLEDGER_SECRET_KEY")
        return key
    path = Path(home).expanduser().resolve() / KEY_FILE
    try:
        if path.exists():
            key = path.read_bytes().strip()
            _check(key, str(path))
            return key
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Fernet.generate_key()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key + b"\n")
        return key
    except FileExistsError:  # another process created it just now
        return load_secret_key(None, home)
    except OSError as exc:
        raise SecretKeyError(f"cannot read or create the secret key {path}: {exc.strerror or exc}") from exc


def _check(key: bytes, where: str) -> None:
    try:
        Fernet(key)
    except ValueError:
        raise SecretKeyError(
            f"{where} is not a secret key (32 bytes, urlsafe base64; make one with "
            "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)"
        ) from None


ADMIN_TOKEN_FILE = "admin.token"


def write_admin_token(home: Path, token: str) -> Path:
    """``<home>/admin.token``, readable by its owner only (0600), replacing any older one."""
    path = Path(home).expanduser().resolve() / ADMIN_TOKEN_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
        os.chmod(path, 0o600)
    except OSError as exc:
        raise SecretKeyError(f"cannot write the admin token to {path}: {exc.strerror or exc}") from exc
    return path
