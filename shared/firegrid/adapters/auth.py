"""The TokenVerifier port: PyGrid's three ways, plus Firebase Auth ID tokens.

As PyGrid does, a token is tried against the ``secret`` (HS256), then the
``pub_key`` (RS256/ES256); when an ``endpoint`` is set, the third party must
vouch for the token too. Algorithms are whitelisted per key type, so ``alg:
none`` and HS/RS key confusion are refused. Every failure is a 401, or a 503
when the party that could decide (Google's certificates, the third-party
endpoint) cannot be reached: never a 500.
"""

from __future__ import annotations

import concurrent.futures
import functools
import ipaddress
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from firegrid.domain.config import INVALID_CONFIG, AuthConfig
from firegrid.domain.errors import BadRequest, Unauthorized, Unavailable

INVALID_TOKEN = "The 'auth_token' you sent is invalid."
HMAC_ALGORITHMS = ["HS256"]
PUBLIC_KEY_ALGORITHMS = ["RS256", "ES256"]
ENDPOINT_TIMEOUT_S = 5.0
"""Total time for the third-party check: connecting, sending and reading the answer."""
ENDPOINT_MAX_RESPONSE_BYTES = 64 * 1024
MIN_RSA_BITS = 2048


def _invalid_token() -> Unauthorized:
    return Unauthorized(INVALID_TOKEN, "invalid_token")


def load_public_key(pem: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """The key a ``pub_key`` PEM holds: RSA of 2048 bits or more, or EC on P-256 (ES256)."""
    bad = BadRequest(
        "'authentication.pub_key' must be a PEM public key: RSA (2048 bits or more) or EC on P-256",
        INVALID_CONFIG,
    )
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnicodeEncodeError):
        raise bad from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise bad


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class JwtVerifier:
    def __init__(
        self,
        *,
        firebase_app: Callable[[], Any] | None = None,
        allow_http_endpoint: bool = False,
        endpoint_timeout_s: float = ENDPOINT_TIMEOUT_S,
    ) -> None:
        self._firebase_app = firebase_app
        """Builds (once) the firebase-admin app that checks Firebase ID tokens."""
        self._allow_http_endpoint = allow_http_endpoint
        """Plain http to a loopback endpoint (the local stack's test endpoints)."""
        self._endpoint_timeout_s = endpoint_timeout_s

    def check(self, auth: AuthConfig) -> None:
        """Refuse, at hosting, a configuration that no token could ever pass."""
        if auth.pub_key is not None:
            load_public_key(auth.pub_key)
        if auth.endpoint is not None and not self._endpoint_allowed(auth.endpoint):
            raise BadRequest(
                "'authentication.endpoint' must be an https URL "
                "(plain http only to loopback in the local stack)",
                INVALID_CONFIG,
            )

    def _endpoint_allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme == "https" and parts.hostname:
            return True
        return self._allow_http_endpoint and parts.scheme == "http" and _is_loopback(parts.hostname)

    def subject(self, token: str, auth: AuthConfig) -> str:
        if auth.firebase:
            subject: str | None = self._firebase_subject(token, auth)
        elif auth.secret or auth.pub_key:
            subject = self._jwt_subject(token, auth)
        else:
            subject = None
        if auth.endpoint:
            vouched = self._endpoint_subject(token, auth.endpoint)
            subject = subject or vouched
        # PyGrid's tokens carry no subject: the token itself is then the identity.
        return subject or f"token:{token}"

    @staticmethod
    def _jwt_subject(token: str, auth: AuthConfig) -> str | None:
        keys: list[tuple[str, list[str]]] = []
        if auth.secret:
            keys.append((auth.secret, HMAC_ALGORITHMS))
        if auth.pub_key:
            keys.append((auth.pub_key, PUBLIC_KEY_ALGORITHMS))
        for key, algorithms in keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=algorithms,
                    audience=auth.audience,
                    issuer=auth.issuer,
                    options={
                        "verify_aud": auth.audience is not None,
                        "require": ["exp"] if auth.require_exp else [],
                    },
                )
            except (jwt.PyJWTError, ValueError, TypeError):
                continue
            subject = claims.get("sub") or claims.get("uid")
            return f"sub:{subject}" if subject else None
        raise _invalid_token()

    def _endpoint_subject(self, token: str, endpoint: str) -> str | None:
        if not self._endpoint_allowed(endpoint):
            raise Unavailable(
                "The authentication endpoint is not an https URL", "auth_endpoint_unavailable"
            )
        try:
            timeout = self._endpoint_timeout_s
            status, body = (
                _endpoint_pool()
                .submit(_ask_endpoint, endpoint, token, timeout)
                .result(timeout=timeout)
            )
        except (concurrent.futures.TimeoutError, requests.RequestException):
            raise Unavailable(
                "The authentication endpoint could not be reached in time",
                "auth_endpoint_unavailable",
            ) from None
        if status != 200 or body is None:
            raise Unauthorized(
                "The 'auth_token' you sent did not pass 3rd party validation.",
                "auth_endpoint_refused",
            )
        subject = body.get("sub") or body.get("uid") or body.get("id")
        return f"endpoint:{subject}" if subject else None

    def _firebase_subject(self, token: str, auth: AuthConfig) -> str:
        from firebase_admin import auth as firebase_auth

        if self._firebase_app is None:
            raise Unavailable("Firebase ID tokens are not configured", "auth_provider_unavailable")
        try:
            claims = firebase_auth.verify_id_token(
                token, app=self._firebase_app(), check_revoked=auth.check_revoked
            )
        except Exception as error:
            mapped = firebase_error(error)
            if mapped is error:  # not one of firebase-admin's failures: a bug, let it show
                raise
            raise mapped from None
        return f"firebase:{claims['uid']}"


def firebase_error(error: Exception) -> Exception:
    """firebase-admin's failures as FireGrid errors: 503 when Google could not be asked,
    401 for everything the token is to blame for."""
    import google.auth.exceptions
    from firebase_admin import auth as firebase_auth
    from firebase_admin import exceptions as firebase_exceptions

    unavailable: tuple[type[Exception], ...] = (
        firebase_auth.CertificateFetchError,
        firebase_exceptions.UnavailableError,
        firebase_exceptions.DeadlineExceededError,
        firebase_exceptions.ResourceExhaustedError,
        google.auth.exceptions.GoogleAuthError,  # no credentials, no transport
    )
    if isinstance(error, unavailable):
        return Unavailable(
            "Firebase could not be reached to check the token", "auth_provider_unavailable"
        )
    if isinstance(error, firebase_exceptions.FirebaseError | ValueError):
        return _invalid_token()
    return error


@functools.cache
def _endpoint_pool() -> concurrent.futures.ThreadPoolExecutor:
    """Third-party checks run here, so a slow endpoint costs the caller at most the timeout."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="auth-endpoint")


def _ask_endpoint(endpoint: str, token: str, timeout_s: float) -> tuple[int, dict[str, Any] | None]:
    """POST the token; the status and the JSON object answered (``{}`` if it is not one,
    None if the answer is larger than any honest one)."""
    with requests.post(
        endpoint,
        json={"auth_token": token},
        timeout=timeout_s,
        allow_redirects=False,
        stream=True,
    ) as response:
        data = _read_at_most(response.iter_content(8192), ENDPOINT_MAX_RESPONSE_BYTES)
        status = response.status_code
    if data is None:
        return status, None
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        body = None
    return status, body if isinstance(body, dict) else {}


def _read_at_most(chunks: Any, limit: int) -> bytes | None:
    """The whole body, or None if it is larger than ``limit``."""
    data = bytearray()
    for chunk in chunks:
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)
