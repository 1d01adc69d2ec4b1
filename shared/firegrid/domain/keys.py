"""Request keys and worker ids: HMACs under a process's server-held secret.

A request key names the cycle and epoch it was issued for, so a stale key is
told apart (409, cycle moved on) from a forged one (401); the server re-derives
it, so none is stored in clear.

A worker id is the MAC of the token subject: the same subject always gets the
same id within a process, but knowing the subject (or the process name) is not
enough to compute it. The id is the device's credential from then on.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
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


_REQUEST_KEY = re.compile(r"([0-9]{1,18})\.([0-9]{1,9})\.([A-Za-z0-9_-]{1,64})", re.ASCII)
WORKER_ID = re.compile(r"[0-9a-f]{32}", re.ASCII)
"""The form of every worker id this server issues (128 bits, lowercase hex)."""


def verify_request_key(secret: str, process_id: str, worker_id: str, key: str) -> KeyScope:
    """The scope a genuine key was issued for; ``Unauthorized`` for anything else."""
    invalid = Unauthorized("Invalid request key!", "invalid_request_key")
    parts = _REQUEST_KEY.fullmatch(key)
    if parts is None:
        raise invalid
    scope = KeyScope(int(parts[1]), int(parts[2]))
    if not hmac.compare_digest(parts[3], _mac(secret, process_id, worker_id, scope)):
        raise invalid
    return scope


def derive_worker_id(secret: str, process_id: str, subject: str) -> str:
    """The worker id of a token subject: stable per process, unguessable without ``secret``."""
    key = hmac.new(secret.encode(), b"firegrid/worker-id", hashlib.sha256).digest()
    message = f"{process_id}\x00{subject}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def pseudonym(worker_id: str) -> str:
    """What operators and object names see of a worker: stable, but not its credential."""
    return hashlib.sha256(f"firegrid/client-id\x00{worker_id}".encode()).hexdigest()[:16]


def redact(credential: str) -> str:
    """A credential as logs may show it: enough to correlate, not enough to use."""
    return credential[:6] + "…" if len(credential) > 6 else "…"


def stable_id(*parts: str, length: int = 24) -> str:
    """A deterministic document id from its natural key (no separators leak)."""
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()
    return digest[:length]
