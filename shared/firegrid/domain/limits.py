"""Every bound on a value that crosses the wire, in one place (docs/protocol.md lists them).

Firestore stores integers as int64 and indexes strings up to 1,500 bytes; a
document id has no ``/`` and is not of the form ``__x__``. Values past these
limits are refused at the edge with a 400, so nothing a device sends can
fail later in a write, a query or an aggregation.
"""

from __future__ import annotations

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

MAX_NAME_LENGTH = 200
"""A model name (``client_config.name``)."""
MAX_VERSION_LENGTH = 100
"""A model version (``client_config.version``)."""
MAX_TOKEN_LENGTH = 8192
"""An ``auth_token`` (JWTs and Firebase ID tokens are far shorter)."""
MAX_FCM_TOKEN_LENGTH = 1024
"""An FCM registration token (about 160 characters in practice; indexed, so below 1,500)."""
MAX_KEY_LENGTH = 128
"""A request key, a cycle start key, a model or plan id, a speed-test nonce."""
MAX_SECRET_LENGTH = 4096
"""``authentication.secret``."""
MAX_PEM_LENGTH = 16384
"""``authentication.pub_key``."""
MAX_URL_LENGTH = 2048
"""``authentication.endpoint``."""
MAX_TEXT_LENGTH = 1024
"""Any other string field."""
MAX_CONFIG_BYTES = 64 * 1024
"""``client_config`` as JSON (it travels in every accepted cycle-request)."""
MAX_NESTING = 20
"""Depth of nested objects and lists (Firestore's own map depth limit is 20)."""

MAX_HOSTED_FILE_BYTES = 512 * 2**20
"""A model or plan uploaded for ``host-training`` (``hosting-upload-urls`` signs this
bound): function ``admin`` holds the model and a plan at once while it validates them."""
MAX_PLANS = 16
"""Plans of one process (``training_plan`` and others)."""

MAX_TENSORS = 10_000
"""Tensors in a hosted model."""
MAX_TENSOR_NAME_LENGTH = 512

MAX_WORKERS = 100_000
MAX_FANOUT_THRESHOLD = 5_000
"""Diffs one fan-out group holds at most: its document lists their worker ids and
weights, and must stay well inside Firestore's 1 MiB."""
"""``max_workers``, ``min_workers``, ``goal_count``, ``min_diffs``, ``max_diffs``."""
DEFAULT_MAX_NUM_SAMPLES = 1_000_000
"""Default ``server_config.max_num_samples``: the largest sample count one report may claim."""
MAX_NUM_SAMPLES = 10**12
"""Largest ``max_num_samples`` a process may configure."""
MAX_CYCLE_LENGTH_S = 366 * 24 * 3600
"""``cycle_length`` (a year); ``retry_after`` and ``availability_ttl`` share it."""
MAX_OVER_SELECTION = 100.0
MAX_SERVER_LR = 1000.0
MAX_STALENESS_EXPONENT = 100.0
"""``staleness_exponent``: beyond this every stale report weighs (almost) nothing."""
MAX_SPEED = 1e15
"""``ping``, ``download``, ``upload`` and the configured minimum speeds."""
MAX_RAM_GB = 1e6
MAX_CPU_CORES = 65536
MAX_METRIC_VALUE = 1e15
"""``loss`` and the timings of a metrics row."""
MAX_STATS_PER_POST = 100
