"""Content fingerprints of stored files: the sha256 a manifest records for each file of a version.

The fingerprints of a base model's input embeddings and tokenizer belong to its record,
:mod:`peft_ext.base_ref` (``embedding_fingerprint``, ``tokenizer_fingerprint``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
