"""sha256 of JSON-able values in canonical form (sorted keys): identities that hold across
machines and runs; and of files, read in blocks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def json_sha256(value: Any, *, compact: bool = True) -> str:
    """sha256 (hex) of ``value`` as JSON with sorted keys; ``compact``: without spaces after
    separators. Sweep fingerprints use ``compact=False``, the form they were first recorded in."""
    separators = (",", ":") if compact else (", ", ": ")
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=separators).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    """sha256 (hex) of the file at ``path``, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
