"""Deterministic content hashes: the same value gives the same key everywhere.

A cache key must name a value identically in every process, on every machine
and in every Python session, so nothing here touches ``hash()`` (salted per
process by ``PYTHONHASHSEED``), ``id()``, ``repr()`` of arbitrary objects or
pickle bytes. Instead each value is written as a canonical byte stream into a
SHA-256: every item is a *frame* ``tag NUL length payload`` (or ``tag NUL
count`` followed by that many child frames), so the stream is prefix-free and
``1``, ``1.0``, ``"1"``, ``True``, ``[1]`` and ``(1,)`` cannot collide. Where a
value has no order of its own (dict items, set members) each member is hashed
on its own and the digests are sorted, which makes the result independent of
insertion order and of the salted iteration order of sets. Arrays are written
as dtype, shape and little-endian C-order bytes; pandas and Arrow data column
by column, with null masks, so bytes hidden under nulls never leak in. We do
not use ``dask.base.tokenize`` (its output depends on which optional hashers
are installed), nor pandas' ``hash_pandas_object`` (64 bits a row, no dtypes,
and ``str()`` of object cells, which embeds memory addresses), nor Arrow IPC
bytes (they carry library versions in the schema metadata).

What cannot be named by content is refused with ``UnhashableInputError``
saying the type, where it sits in the value, and why: locks, sockets, open
files, generators and iterators, self-referential containers, and plain
objects with no data whose equality is their ``id()``. Ordinary class
instances are hashed by class and pickle state (as Prefect does, minus the
pickle bytes); functions, lambdas included, by qualified name, source,
defaults and closure values — not by the globals they read. A type that knows
better defines ``__daskflow_hash__(self)`` returning plain data to hash in its
place (and may name itself with ``__daskflow_hash_name__``, where several
classes stand for the same thing: the data versions of cached values); ``daskflow.blocks.Secret`` uses it to be hashed by name, never value.

The package at its seams: :mod:`.frames` (the byte frames), :mod:`.encoder`
(builtins, containers, instances, functions, and the public functions),
:mod:`.flat` (the same bytes for flat values, written in one go: the common
case of a cache key) and :mod:`.libraries` (numpy, pandas, Arrow, pydantic).
"""

from __future__ import annotations

from daskflow.hashing.encoder import function_source_hash, hash_objects, stable_hash
from daskflow.hashing.frames import FORMAT_VERSION

__all__ = ["FORMAT_VERSION", "function_source_hash", "hash_objects", "stable_hash"]
