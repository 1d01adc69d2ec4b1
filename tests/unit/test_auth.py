"""The token verifier as PyGrid's, hardened: secret then public key, then the third party;
keys checked at hosting; endpoints bounded in time, size and redirects; every Firebase
failure a 401 or a 503."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from firegrid.adapters.auth import JwtVerifier, firebase_error
from firegrid.domain.config import AuthConfig, ServerConfig
from firegrid.domain.errors import BadRequest, Unauthorized, Unavailable
from firegrid.local.serving import serving
from firegrid.wire import status_of

# PyGrid's own fixture: HS256 over an empty payload with the secret "abc".
PYGRID_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.yYhP2xosmpuyV5aoT8mz7GFESzq3hKSy-CRWC-vYOIU"
)


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@functools.cache
def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def test_pygrid_hosts_with_secret_and_pub_key_and_logs_in_with_rs256() -> None:
    """PyGrid's integration test: both configured, an RS256 token: secret fails, key passes."""
    auth = AuthConfig(secret="abc", pub_key=_pem(rsa_key()))
    verifier = JwtVerifier()
    verifier.check(auth)

    rs256 = jwt.encode({"sub": "alice"}, rsa_key(), algorithm="RS256")
    assert verifier.subject(rs256, auth) == "sub:alice"
    assert verifier.subject(PYGRID_TOKEN, auth) == f"token:{PYGRID_TOKEN}"  # the secret passes
    stranger = jwt.encode({"sub": "alice"}, rsa_key(3072), algorithm="RS256")
    with pytest.raises(Unauthorized, match="invalid"):
        verifier.subject(stranger, auth)


def test_no_algorithm_confusion_and_no_alg_none() -> None:
    pem = _pem(rsa_key())
    auth = AuthConfig(pub_key=pem)
    unsigned = jwt.encode({"sub": "mallory"}, None, algorithm="none")
    # HS256 keyed with the public key text: the classic confusion attack.
    import hashlib
    import hmac

    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}').decode()
    payload = jwt.utils.base64url_encode(b'{"sub":"mallory"}').decode()
    mac = hmac.new(pem.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    confused = f"{header}.{payload}.{jwt.utils.base64url_encode(mac).decode()}"
    for token in (unsigned, confused):
        with pytest.raises(Unauthorized):
            JwtVerifier().subject(token, auth)


def test_require_exp_refuses_tokens_without_an_expiry() -> None:
    auth = AuthConfig(secret="abc", require_exp=True)
    verifier = JwtVerifier()
    with pytest.raises(Unauthorized):
        verifier.subject(PYGRID_TOKEN, auth)
    soon = datetime.now(UTC) + timedelta(minutes=5)
    assert verifier.subject(jwt.encode({"sub": "a", "exp": soon}, "abc"), auth) == "sub:a"
    past = datetime.now(UTC) - timedelta(minutes=5)
    with pytest.raises(Unauthorized):
        verifier.subject(jwt.encode({"sub": "a", "exp": past}, "abc"), auth)


@pytest.mark.parametrize(
    "pem",
    [
        "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n",
        "not a key",
        _pem(rsa_key(1024)),
        _pem(ec.generate_private_key(ec.SECP384R1())),
    ],
)
def test_unusable_public_keys_are_refused_at_hosting(pem: str) -> None:
    with pytest.raises(BadRequest, match="must be a PEM public key") as refused:
        JwtVerifier().check(AuthConfig(pub_key=pem))
    assert refused.value.code == "invalid_config"


def test_es256_keys_are_accepted() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    auth = AuthConfig(pub_key=_pem(key))
    JwtVerifier().check(auth)
    assert JwtVerifier().subject(jwt.encode({"sub": "e"}, key, algorithm="ES256"), auth) == "sub:e"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"secret": "abc", "firebase": True}, "cannot be combined"),
        ({"pub_key": "x", "firebase": True}, "cannot be combined"),
        ({"secret": ""}, "must be a non-empty string"),
        ({"secret": "abc", "check_revoked": True}, "Firebase ID tokens only"),
        ({"endpoint": "ftp://x"}, "must be an https URL"),
    ],
)
def test_ambiguous_or_empty_auth_configs_are_refused(raw: dict, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        ServerConfig.parse({"cycle_length": 5, "num_cycles": 1, "authentication": raw})


@pytest.mark.parametrize(
    ("url", "local", "allowed"),
    [
        ("https://auth.example.com/verify", False, True),
        ("http://auth.example.com/verify", False, False),
        ("http://127.0.0.1:8080/verify", False, False),
        ("http://127.0.0.1:8080/verify", True, True),
        ("http://localhost/verify", True, True),
        ("http://auth.example.com/verify", True, False),
        ("https:///no-host", False, False),
    ],
)
def test_endpoints_must_be_https_outside_the_local_stack(url, local, allowed) -> None:
    verifier = JwtVerifier(allow_http_endpoint=local)
    if allowed:
        verifier.check(AuthConfig(endpoint=url))
    else:
        with pytest.raises(BadRequest, match="https"):
            verifier.check(AuthConfig(endpoint=url))


# -- the third-party endpoint --------------------------------------------------------


Behaviour = Callable[[BaseHTTPRequestHandler], None]


def _answer(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def endpoint() -> Iterator[Callable[[Behaviour], str]]:
    """``endpoint(behaviour)``: a loopback URL whose POST handler is ``behaviour``."""
    hits: list[str] = []
    running = contextlib.ExitStack()

    def start(behaviour: Behaviour) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                hits.append(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                behaviour(self)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True  # a handler left hanging must not hold the close
        return f"{running.enter_context(serving(server))}/verify"

    start.hits = hits  # type: ignore[attr-defined]
    with running:
        yield start


def _local(timeout_s: float = 5.0) -> JwtVerifier:
    return JwtVerifier(allow_http_endpoint=True, endpoint_timeout_s=timeout_s)


def test_endpoint_and_secret_must_both_pass(endpoint) -> None:
    """PyGrid: with a secret and an endpoint, the JWT is checked, then the third party."""
    yes = endpoint(lambda h: _answer(h, 200, b'{"sub": "from-endpoint"}'))
    no = endpoint(lambda h: _answer(h, 403, b"{}"))
    valid = jwt.encode({"sub": "alice"}, "abc")
    assert _local().subject(valid, AuthConfig(secret="abc", endpoint=yes)) == "sub:alice"
    with pytest.raises(Unauthorized) as refused:
        _local().subject(valid, AuthConfig(secret="abc", endpoint=no))
    assert refused.value.code == "auth_endpoint_refused"
    with pytest.raises(Unauthorized) as invalid:
        _local().subject("forged", AuthConfig(secret="abc", endpoint=yes))
    assert invalid.value.code == "invalid_token"
    assert _local().subject("t", AuthConfig(endpoint=yes)) == "endpoint:from-endpoint"


def test_redirects_are_not_followed(endpoint) -> None:
    target = endpoint(lambda h: _answer(h, 200, b'{"sub": "x"}'))

    def redirect(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(307)
        handler.send_header("Location", target)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    with pytest.raises(Unauthorized, match="3rd party"):
        _local().subject("t", AuthConfig(endpoint=endpoint(redirect)))
    assert endpoint.hits == ["/verify"]  # the redirect's target was never asked


def test_an_oversized_answer_is_refused(endpoint) -> None:
    huge = endpoint(lambda h: _answer(h, 200, b'{"sub": "' + b"x" * 200_000 + b'"}'))
    with pytest.raises(Unauthorized, match="3rd party"):
        _local().subject("t", AuthConfig(endpoint=huge))


def test_a_dribbling_endpoint_costs_at_most_the_total_timeout(endpoint) -> None:
    """Each byte arrives within any per-read timeout; only a total deadline stops it."""

    def dribble(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        for _ in range(1000):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.05)

    started = time.monotonic()
    with pytest.raises(Unavailable) as unavailable:
        _local(timeout_s=0.5).subject("t", AuthConfig(endpoint=endpoint(dribble)))
    assert time.monotonic() - started < 3.0
    assert status_of(unavailable.value) == 503


# -- Firebase ---------------------------------------------------------------------


def _firebase_errors() -> list[tuple[Exception, int]]:
    from firebase_admin import auth as firebase_auth
    from firebase_admin import exceptions as firebase_exceptions

    return [
        (firebase_auth.InvalidIdTokenError("bad"), 401),
        (firebase_auth.ExpiredIdTokenError("old", cause=None), 401),
        (firebase_auth.RevokedIdTokenError("revoked"), 401),
        (firebase_auth.UserDisabledError("disabled"), 401),
        (firebase_auth.UserNotFoundError("gone"), 401),
        (ValueError("malformed"), 401),
        (firebase_auth.CertificateFetchError("no certs", cause=None), 503),
        (firebase_exceptions.UnavailableError("down"), 503),
        (firebase_exceptions.DeadlineExceededError("slow"), 503),
    ]


@pytest.mark.parametrize(("error", "status"), _firebase_errors())
def test_every_firebase_failure_is_a_401_or_503(monkeypatch, error, status) -> None:
    from firebase_admin import auth as firebase_auth

    seen: list[bool] = []

    def verify(token: str, app: object = None, check_revoked: bool = False) -> dict:
        seen.append(check_revoked)
        raise error

    monkeypatch.setattr(firebase_auth, "verify_id_token", verify)
    verifier = JwtVerifier(firebase_app=lambda: None)
    with pytest.raises((Unauthorized, Unavailable)) as raised:
        verifier.subject("t", AuthConfig(firebase=True, check_revoked=True))
    assert status_of(raised.value) == status
    assert seen == [True]


def test_without_a_firebase_app_firebase_tokens_are_unavailable() -> None:
    with pytest.raises(Unavailable):
        JwtVerifier().subject("t", AuthConfig(firebase=True))


def test_an_unknown_error_is_not_disguised() -> None:
    bug = KeyError("a bug")
    assert firebase_error(bug) is bug


def _offline_app() -> object:
    """A firebase-admin app with a throwaway service account: it gets as far as fetching
    Google's certificates, which this sandbox cannot reach."""
    import firebase_admin
    from firebase_admin import credentials

    try:
        return firebase_admin.get_app("firegrid-offline-test")
    except ValueError:
        pass
    key = rsa_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    account = credentials.Certificate(
        {
            "type": "service_account",
            "project_id": "demo-firegrid",
            "private_key": key.decode(),
            "client_email": "test@demo-firegrid.iam.gserviceaccount.com",
            "token_uri": "http://127.0.0.1:9/token",
        }
    )
    return firebase_admin.initialize_app(
        account, options={"projectId": "demo-firegrid"}, name="firegrid-offline-test"
    )


@pytest.mark.parametrize("app_of", ["default", "offline"])
def test_real_firebase_admin_failures_here_are_503s(monkeypatch, app_of: str) -> None:
    """Without credentials (a DefaultCredentialsError) or without network (a
    CertificateFetchError), firebase-admin cannot decide: a 503, never a 500."""
    from firegrid.adapters.firebase import auth_app

    monkeypatch.delenv("FIREBASE_AUTH_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    app = _offline_app if app_of == "offline" else (lambda: auth_app("demo-firegrid"))
    token = jwt.encode(
        {"sub": "u", "aud": "demo-firegrid", "iss": "https://securetoken.google.com/demo-firegrid"},
        rsa_key(),
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    with pytest.raises(Unavailable) as unavailable:
        JwtVerifier(firebase_app=app).subject(token, AuthConfig(firebase=True))
    assert unavailable.value.code == "auth_provider_unavailable"
