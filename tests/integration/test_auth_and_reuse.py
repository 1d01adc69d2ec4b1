"""Third-party authentication endpoints, per-process workers, and worker reuse rules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest

from firegrid.local.serving import serving

from .support import Api, cycle_seq, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def api(clean_stack) -> Api:
    return Api(clean_stack.base_url, clean_stack.admin_token)


class _Vouch(BaseHTTPRequestHandler):
    """Vouches for tokens that start with 'good-'; the rest of the token is the user id."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        token = body.get("auth_token", "")
        if token.startswith("good-"):
            payload = json.dumps({"sub": token.removeprefix("good-")}).encode()
            self.send_response(200)
        else:
            payload = b'{"error": "no"}'
            self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def vouch_url() -> Iterator[str]:
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _Vouch)) as base_url:
        yield f"{base_url}/verify"


def test_third_party_endpoint_vouches_for_tokens(api: Api, vouch_url: str) -> None:
    api.host(authentication={"endpoint": vouch_url})
    alice = api.authenticate(token="good-alice")
    assert api.authenticate(token="good-alice") == alice
    assert api.authenticate(token="good-bob") != alice
    refused = api.device("POST", "authenticate", json={"model_name": "mnist", "auth_token": "bad"})
    assert refused.status_code == 401
    assert refused.json()["code"] == "auth_endpoint_refused"


def test_unreachable_endpoint_is_a_clear_503(api: Api) -> None:
    """Not the device's fault: it may retry (503), and nothing is learnt of the token."""
    api.host(authentication={"endpoint": "http://127.0.0.1:9/nothing-listens-here"})
    response = api.device("POST", "authenticate", json={"model_name": "mnist", "auth_token": "t"})
    assert response.status_code == 503
    assert response.json()["code"] == "auth_endpoint_unavailable"


def test_a_worker_of_one_process_looks_unknown_to_another(api: Api) -> None:
    """Another process's worker id and an id nobody issued get the same answer."""
    api.host(name="a")
    api.host(name="b")
    worker_of_a = api.authenticate("a")
    other = api.device("POST", "cycle-request", json={"worker_id": worker_of_a, "model": "b"})
    nobody = api.device("POST", "cycle-request", json={"worker_id": "f" * 32, "model": "b"})
    assert other.status_code == nobody.status_code == 401
    assert other.json() == nobody.json()
    assert other.json()["code"] == "unknown_worker"


def test_no_version_means_the_newest_version(api: Api) -> None:
    api.host(version="1")
    newest = api.host(version="2")
    _, accepted = api.join()
    assert accepted["version"] == "2" and accepted["model_id"] == newest


def test_do_not_reuse_workers_until_cycle(api: Api) -> None:
    api.host(authentication={"secret": "abc"}, num_cycles=4, do_not_reuse_workers_until_cycle=2)
    alice = api.authenticate(token=jwt.encode({"sub": "alice"}, "abc", algorithm="HS256"))
    bob = api.authenticate(token=jwt.encode({"sub": "bob"}, "abc", algorithm="HS256"))

    first = api.cycle_request(alice)
    assert api.report(alice, first["request_key"]).status_code == 200
    wait_for(lambda: cycle_seq(api) == 2, what="cycle 2")
    assert api.cycle_request(alice) | {"timeout": 0} == {
        "status": "rejected",
        "reason": "not_reusable",
        "timeout": 0,
    }
    second = api.cycle_request(bob)
    assert api.report(bob, second["request_key"]).status_code == 200
    wait_for(lambda: cycle_seq(api) == 3, what="cycle 3")
    assert api.cycle_request(alice)["status"] == "accepted"


def test_admin_reads_need_a_name(api: Api) -> None:
    for path in ("status", "retrieve-model", "training-metrics"):
        response = api.admin("GET", path)
        assert response.status_code == 400, path
        assert response.json()["error"] == "'name' is required"
    api.host()
    bad = api.admin("GET", "retrieve-model", params={"name": "mnist", "checkpoint": "first"})
    assert bad.status_code == 400
    assert api.admin("POST", "host-training", data="[]").status_code == 400
