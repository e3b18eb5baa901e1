"""The key that encrypts block secrets at rest, and the two operations that use it.

Secret fields of a block are stored as Fernet tokens (AES-128-CBC with an
HMAC-SHA256, from ``cryptography``): a token that was altered, or that was made
with another key, fails its HMAC check, so a wrong key is always an error and
never garbage. The key comes from one of two places, in this order:

1. ``DASKFLOW_SECRET_KEY``, a Fernet key (44 url-safe base64 characters, as
   ``daskflow block key`` or ``Fernet.generate_key()`` print): what a worker,
   a container or CI sets, since it needs no file;
2. the file ``secret.key`` in the daskflow home, created on the first save
   with owner-only permissions (0600). A key file that the group or others may
   read is refused: anyone who can read it can read every secret.

Reading a secret never creates a key: without one, there is nothing the
secret could be decrypted with, and the error says where the key was looked for.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from daskflow import settings
from daskflow.exceptions import SecretKeyError

__all__ = ["KEY_ENV_VAR", "KEY_FILE_NAME", "decrypt", "encrypt", "key_file", "load_key"]

KEY_ENV_VAR = "DASKFLOW_SECRET_KEY"
KEY_FILE_NAME = "secret.key"

_SAME_KEY_FIX = (
    f"Fix: use the key the secret was saved with — set {KEY_ENV_VAR} to it, or copy that home's "
    f"{KEY_FILE_NAME} into $DASKFLOW_HOME — or save the secret again with this key."
)


def key_file() -> Path:
    """Where the key file lives: ``$DASKFLOW_HOME/secret.key``."""
    return settings.home() / KEY_FILE_NAME


def _fernet(key: bytes, where: str) -> Fernet:
    try:
        return Fernet(key.strip())
    except (ValueError, TypeError):
        raise SecretKeyError(
            f"The secret key from {where} is not a Fernet key (32 bytes, url-safe base64: 44 characters). "
            "Fix: generate one with python -c 'from cryptography.fernet import Fernet; "
            f"print(Fernet.generate_key().decode())' and set {KEY_ENV_VAR} to it."
        ) from None


def _check_private(path: Path) -> None:
    if os.name == "nt":  # no POSIX modes there; the home folder's ACL is what protects it
        return
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretKeyError(
            f"The secret key file {path} may be read by others (mode {stat.S_IMODE(mode):04o}): anyone who can "
            f"read it can read every block secret. Fix: chmod 600 {path} (or set {KEY_ENV_VAR} instead)."
        )


def _create_key_file(path: Path) -> None:
    try:
        # O_EXCL: two processes saving their first secret at once keep one key, the first one written.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as f:
        f.write(Fernet.generate_key())


def load_key(*, create: bool = False) -> tuple[Fernet, str]:
    """The Fernet for block secrets and where its key came from (for messages).

    ``create`` makes the key file when neither the variable nor the file is
    there (saving a secret); otherwise a missing key is a :class:`SecretKeyError`.
    """
    from_env = os.environ.get(KEY_ENV_VAR)
    if from_env:
        return _fernet(from_env.encode(), f"${KEY_ENV_VAR}"), f"${KEY_ENV_VAR}"
    path = key_file()
    if not path.exists():
        if not create:
            raise SecretKeyError(
                f"No key to decrypt block secrets: {KEY_ENV_VAR} is not set and {path} does not exist. "
                f"Fix: set {KEY_ENV_VAR} to the key the secrets were saved with (a Dask worker needs it too, "
                "e.g. in the worker's environment), or copy the saving machine's key file there."
            )
        _create_key_file(path)
    _check_private(path)
    where = f"the key file {path}"
    return _fernet(path.read_bytes(), where), where


def encrypt(plaintext: str) -> str:
    """``plaintext`` as a Fernet token (text), with the key made on first use if there is none."""
    fernet, _ = load_key(create=True)
    return fernet.encrypt(plaintext.encode()).decode("ascii")


def decrypt(token: str, *, what: str = "the secret") -> str:
    """The text inside ``token``; a :class:`SecretKeyError` if this key did not make it (``what`` names it)."""
    fernet, where = load_key()
    try:
        return fernet.decrypt(token.encode("ascii")).decode()
    except (InvalidToken, UnicodeError):
        raise SecretKeyError(
            f"{what} could not be decrypted with the key from {where}: it was saved with another key, "
            f"or its stored token was altered. {_SAME_KEY_FIX}"
        ) from None
