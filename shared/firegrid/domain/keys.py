"""Request keys: HMACs the server can re-derive, so none is stored in clear.

A key names the cycle and epoch it was issued for, so a stale key is told
apart (409, cycle moved on) from a forged one (401).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from firegrid.domain.errors import Unauthorized


@dataclass(frozen=True)
class KeyScope:
    seq: int
    epoch: int


def _mac(secret: str, process_id: str, worker_id: str, scope: KeyScope) -> str:
    message = f"{process_id}:{scope.seq}:{scope.epoch}:{worker_id}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def issue_request_key(secret: str, process_id: str, worker_id: str, scope: KeyScope) -> str:
    return f"{scope.seq}.{scope.epoch}.{_mac(secret, process_id, worker_id, scope)}"


def verify_request_key(secret: str, process_id: str, worker_id: str, key: str) -> KeyScope:
    """The scope a genuine key was issued for; ``Unauthorized`` for anything else."""
    invalid = Unauthorized("Invalid request key!", "invalid_request_key")
    parts = key.split(".")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        raise invalid
    scope = KeyScope(int(parts[0]), int(parts[1]))
    if not hmac.compare_digest(parts[2], _mac(secret, process_id, worker_id, scope)):
        raise invalid
    return scope


def stable_id(*parts: str, length: int = 24) -> str:
    """A deterministic document id from its natural key (no separators leak)."""
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()
    return digest[:length]
