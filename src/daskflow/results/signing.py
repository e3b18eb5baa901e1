"""Signing pickled results, so a cache folder cannot become a way to run code.

Unpickling runs whatever code the bytes name, so a pickled entry is only ever
unpickled after its HMAC-SHA256 signature has been checked against the
configured key. The key comes from, in order: the ``signing_key`` given to the
store, the ``daskflow.results.signing_key`` setting, or a key file
``<home>/results.key`` made on first use. The file holds 32 random bytes in
hex, is readable by its owner only (0600), and is created with a hard link
from a private temp file: of two processes creating it at once, exactly one
wins and both then use its key, so neither signs with a key that is lost.

The signature covers the entry's cache key as well as the bytes, so a signed
entry copied under another key does not verify.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import warnings
from contextlib import suppress
from pathlib import Path

from daskflow import settings
from daskflow.exceptions import ConfigurationError

__all__ = ["KEY_FILE_NAME", "SIGNATURE_SCHEME", "load_or_create_key_file", "resolve_signing_key", "sign", "verify"]

KEY_FILE_NAME = "results.key"
SIGNATURE_SCHEME = "hmac-sha256"

_DOMAIN = b"daskflow-result-pickle-v1\x00"


def resolve_signing_key(explicit: bytes | str | None) -> bytes:
    """The key to sign and verify pickles with (see the module docstring for the order).

    Raises ``ConfigurationError`` for an empty key or an unusable key file and
    ``OSError`` when the key file cannot be read or created.
    """
    if explicit is not None:
        return _as_key(explicit, "the signing_key argument")
    configured = settings.get("results.signing_key", None)
    if configured is not None:
        return _as_key(configured, "the daskflow.results.signing_key setting")
    return load_or_create_key_file(settings.home() / KEY_FILE_NAME)


def load_or_create_key_file(path: Path) -> bytes:
    """Read the key file at ``path``, creating it (0600, atomically) if absent."""
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(fd, "w", encoding="ascii") as f:
            # The umask can only remove bits, but say 0600 explicitly anyway.
            os.fchmod(f.fileno(), 0o600)
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with suppress(FileExistsError):  # another process made it first: use theirs
            os.link(temp, path)
    finally:
        with suppress(OSError):
            os.unlink(temp)
    return _read_key_file(path)


def sign(key: bytes, entry_key: str, payload: bytes) -> str:
    """The signature of ``payload`` stored under ``entry_key``, as hex."""
    return _mac(key, entry_key, payload).hexdigest()


def verify(key: bytes, entry_key: str, payload: bytes, signature: str) -> bool:
    """Whether ``signature`` is that of ``payload`` under ``entry_key`` (constant time)."""
    expected = _mac(key, entry_key, payload).hexdigest()
    return hmac.compare_digest(expected, signature)


def _mac(key: bytes, entry_key: str, payload: bytes) -> hmac.HMAC:
    mac = hmac.new(key, _DOMAIN, hashlib.sha256)
    mac.update(entry_key.encode("utf-8") + b"\x00")
    mac.update(payload)
    return mac


def _read_key_file(path: Path) -> bytes:
    text = path.read_text(encoding="ascii").strip()
    if not text:
        raise ConfigurationError(
            f"the result signing key file {path} is empty. Fixes: 1. delete it and daskflow "
            "makes a new one (pickled results signed with the old key are then recomputed); "
            "2. set daskflow.results.signing_key."
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        warnings.warn(
            f"the result signing key file {path} is readable by other users (mode {mode:o}); "
            f"anyone who can read it can make daskflow unpickle their code. Fix: chmod 600 {path}",
            UserWarning,
            stacklevel=3,
        )
    return text.encode("ascii")


def _as_key(value: object, origin: str) -> bytes:
    key = value.encode("utf-8") if isinstance(value, str) else value
    if not isinstance(key, bytes) or not key:
        raise ConfigurationError(
            f"{origin} must be a non-empty str or bytes, got {type(value).__name__}. "
            "Fix: use e.g. secrets.token_hex(32)."
        )
    return key
