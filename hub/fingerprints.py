"""Content fingerprints: files, input-embedding weights and tokenizers.

The embedding fingerprint hashes the weights rounded to bfloat16 (round-to-nearest-even, little-endian) with their
shape, so the same checkpoint loaded in float32 or bfloat16 gives the same fingerprint, while any real change to the
embeddings does not. The tokenizer fingerprint hashes the vocabulary (token -> id, added tokens included) and the
special tokens with their ids; the tokenizer class (fast or slow) does not enter it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_CHUNK_ROWS = 8192


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embedding_fingerprint(weight: Any) -> str:
    """sha256 of a 2-D embedding tensor in canonical form: ``"<rows>x<cols>:"`` then bfloat16 LE bytes, row-major."""
    import torch

    weight = weight.detach()
    digest = hashlib.sha256(f"{weight.shape[0]}x{weight.shape[1]}:".encode())
    for start in range(0, weight.shape[0], _CHUNK_ROWS):
        rows = weight[start : start + _CHUNK_ROWS].to("cpu", torch.bfloat16).contiguous()
        digest.update(rows.view(torch.int16).numpy().astype("<i2", copy=False).tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of a tokenizer's vocabulary and special tokens, canonical JSON."""
    vocab = sorted((int(i), str(t)) for t, i in tokenizer.get_vocab().items())
    specials = sorted(
        (str(t), tokenizer.convert_tokens_to_ids(t)) for t in getattr(tokenizer, "all_special_tokens", [])
    )
    roles = {role: getattr(tokenizer, f"{role}_token_id", None) for role in ("bos", "eos", "pad", "unk", "sep", "cls")}
    payload = json.dumps({"vocab": vocab, "special": specials, "roles": roles}, sort_keys=True, ensure_ascii=True)
    return sha256_bytes(payload.encode())
