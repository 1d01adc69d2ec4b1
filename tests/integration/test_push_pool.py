"""The push-driven worker pool on the emulators and the local FCM endpoint."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
import requests
from google.cloud import firestore

from .support import (
    Api,
    assignment_reported_event,
    cycle_closing_event,
    cycle_seq,
    pushes,
    redeliver,
    register_token,
    wait_for,
    wait_past_deadline,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def api(clean_stack) -> Api:
    return Api(clean_stack.base_url, clean_stack.admin_token)


def _join_pool(api: Api, count: int, model: str = "mnist", **profile) -> dict[str, str]:
    """``count`` new workers with tokens: worker id -> token."""
    tokens = {}
    for _ in range(count):
        worker_id = api.authenticate(model)
        token = f"tok-{uuid.uuid4().hex[:12]}"
        register_token(api, worker_id, token, **profile)
        tokens[worker_id] = token
    return tokens


def _settle(seconds: float = 1.0) -> None:
    """Triggers run asynchronously; give a push that should NOT happen time to show up."""
    time.sleep(seconds)


def test_below_min_workers_nothing_is_sent_then_exactly_the_sample(api: Api, clean_stack) -> None:
    api.host(min_workers=4, max_workers=4, max_diffs=4, goal_count=2, over_selection=1.5)
    tokens = _join_pool(api, 3)
    _settle()
    assert pushes(clean_stack.fcm_url, "request_for_cycle") == []
    tokens |= _join_pool(api, 1)
    invited = wait_for(lambda: pushes(clean_stack.fcm_url, "request_for_cycle"), what="invitations")
    _settle()
    invited = pushes(clean_stack.fcm_url, "request_for_cycle")
    assert len(invited) == 3  # ceil(goal_count 2 x over_selection 1.5)
    assert len({m["token"] for m in invited}) == 3
    assert {m["token"] for m in invited} <= set(tokens.values())
    data = invited[0]["data"]
    assert data["model"] == "mnist" and data["version"] == "1.0" and data["cycle_id"] == "1"
    assert data["cycle_start_request_key"]
    assert api.status()["pool"]["invited"] == 3


def test_assigned_workers_are_never_invited(api: Api, clean_stack) -> None:
    api.host(min_workers=3, max_workers=5, max_diffs=5, worker_participation_mode=1)
    early = api.authenticate()
    register_token(api, early, "tok-early")
    assert api.cycle_request(early)["status"] == "accepted"
    _join_pool(api, 3)
    wait_for(lambda: len(pushes(clean_stack.fcm_url, "request_for_cycle")) >= 3, what="invitations")
    _settle()
    tokens = [m["token"] for m in pushes(clean_stack.fcm_url, "request_for_cycle")]
    assert "tok-early" not in tokens
    assert len(tokens) == len(set(tokens)) == 3


@pytest.mark.parametrize(("mode", "late_joiner_invited"), [(0, False), (1, True)])
def test_participation_mode_and_a_late_joiner(
    api: Api, clean_stack, mode: int, late_joiner_invited: bool
) -> None:
    api.host(min_workers=1, max_workers=6, max_diffs=6, goal_count=4, over_selection=1.0,
             worker_participation_mode=mode)  # fmt: skip
    first = _join_pool(api, 1)
    wait_for(lambda: len(pushes(clean_stack.fcm_url, "request_for_cycle")) == 1, what="round 1")
    worker_id = next(iter(first))
    invited = pushes(clean_stack.fcm_url, "request_for_cycle")
    key = invited[0]["data"]["cycle_start_request_key"]
    assert api.cycle_request(worker_id, cycle_start_request_key=key)["status"] == "accepted"
    late = _join_pool(api, 1)
    _settle()
    late_tokens = {m["token"] for m in pushes(clean_stack.fcm_url, "request_for_cycle")} & set(
        late.values()
    )
    assert bool(late_tokens) is late_joiner_invited


def test_require_invitation_needs_the_start_key(api: Api, clean_stack) -> None:
    api.host(min_workers=1, max_workers=2, max_diffs=2, require_invitation=True)
    tokens = _join_pool(api, 1)
    outsider = api.authenticate()
    message = wait_for(lambda: pushes(clean_stack.fcm_url, "request_for_cycle"), what="invitation")[
        0
    ]
    worker_id = next(iter(tokens))
    rejected = api.cycle_request(outsider)
    assert rejected["status"] == "rejected" and rejected["reason"] == "not_invited"
    assert rejected["timeout"] >= 1
    wrong = api.cycle_request(worker_id, cycle_start_request_key="guess")
    assert wrong["reason"] == "not_invited"
    key = message["data"]["cycle_start_request_key"]
    assert api.cycle_request(worker_id, cycle_start_request_key=key)["status"] == "accepted"


def test_completion_and_final_pushes_reach_the_right_workers_once(
    api: Api, clean_stack, stack_env
) -> None:
    process_id = api.host(num_cycles=2, min_workers=1, max_workers=1, max_diffs=1)
    tokens = _join_pool(api, 3)
    registered = set(tokens.values())
    worker_id = next(iter(tokens))
    accepted = api.cycle_request(worker_id)
    assert api.report(worker_id, accepted["request_key"]).status_code == 200
    wait_for(lambda: cycle_seq(api) == 2, what="cycle 2")
    wait_for(lambda: pushes(clean_stack.fcm_url, "cycle_completed"), what="cycle_completed")
    path = f"processes/{process_id}/cycles/1/assignments/{worker_id}"
    cycle_path = f"processes/{process_id}/cycles/1"
    db = firestore.Client(project=clean_stack.project_id)
    for _ in range(2):  # the same trigger events delivered again change nothing
        stored = db.document(path).get().to_dict()
        redeliver(
            clean_stack,
            "on-assignment-written",
            assignment_reported_event(clean_stack, path, stored),
        )
        closed = db.document(cycle_path).get().to_dict()
        redeliver(
            clean_stack, "on-cycle-written", cycle_closing_event(clean_stack, cycle_path, closed)
        )
    _settle()
    completed = pushes(clean_stack.fcm_url, "cycle_completed")
    assert Counter(m["token"] for m in completed) == Counter(registered)
    assert {m["data"]["cycle_id"] for m in completed} == {"2"}
    online = pushes(clean_stack.fcm_url, "worker_online_status")
    assert Counter(m["token"] for m in online) == Counter(registered)

    second = next(w for w in tokens if w != worker_id)
    accepted = api.cycle_request(second)
    assert api.report(second, accepted["request_key"]).status_code == 200
    wait_for(lambda: api.status()["status"] == "completed", what="training to complete")
    wait_for(lambda: pushes(clean_stack.fcm_url, "fl_completed"), what="fl_completed")
    _settle()
    final = pushes(clean_stack.fcm_url, "fl_completed")
    assert Counter(m["token"] for m in final) == Counter(registered)
    assert len(pushes(clean_stack.fcm_url, "cycle_completed")) == 3  # only after cycle 1


def test_reset_pushes_once_to_the_dropped_assignees_and_the_pool(api: Api, clean_stack) -> None:
    api.host(cycle_length=3, min_diffs=2, max_diffs=2, max_workers=3, min_workers=5)
    tokens = _join_pool(api, 3)  # below min_workers: no invitations to muddle the picture
    idle = next(iter(tokens))
    assert api.cycle_request(idle)["status"] == "accepted"
    wait_past_deadline(api)
    assert api.tick()["reset"] == ["mnist:1.0#1"]
    assert api.tick()["reset"] == []
    _settle()
    reset = pushes(clean_stack.fcm_url, "cycle_reset")
    assert Counter(m["token"] for m in reset) == Counter(tokens.values())
    assert pushes(clean_stack.fcm_url, "request_for_cycle") == []


def test_an_unregistered_token_leaves_the_pool(api: Api, clean_stack) -> None:
    api.host(min_workers=10)
    tokens = _join_pool(api, 2)
    gone, kept = list(tokens.values())
    requests.post(f"{clean_stack.fcm_url}/_fcm/unregister", json={"token": gone}, timeout=10)
    response = api.admin("POST", "push", json={"name": "mnist", "type": "worker_online_status"})
    assert response.status_code == 200, response.text
    assert response.json()["push"]["unregistered"] == 1
    pool = api.status()["pool"]
    assert pool["registered"] == 1 and pool["available"] == 1
    second = api.admin(
        "POST", "push", json={"name": "mnist", "type": "worker_online_status"}
    ).json()
    assert second["push"]["recipients"] == 1 and second["push"]["sent"] == 1
    assert [m["token"] for m in pushes(clean_stack.fcm_url)] == [kept, kept]
    last = api.status()["pool"]["last_sends"]
    assert last[0]["type"] == "worker_online_status" and last[0]["sent"] == 1


def test_worker_status_and_profile(api: Api, clean_stack) -> None:
    api.host(min_workers=10)
    worker_id = api.authenticate()
    register_token(api, worker_id, "tok-x", ram_gb=1.5, cpu_cores=4)
    pool = api.status()["pool"]
    assert pool["available"] == 1 and pool["slow"] == 1
    off = api.device(
        "POST", "update-worker-status", json={"worker_id": worker_id, "available": False}
    )
    assert off.status_code == 200
    assert api.status()["pool"]["available"] == 0
    bad = api.device("POST", "worker-status", json={"worker_id": worker_id, "available": "yes"})
    assert bad.status_code == 400
    missing = api.device("POST", "save-fcm-token", json={"worker_id": worker_id})
    assert missing.status_code == 400 and missing.json()["error"] == "'fcm_token' is required"
    unknown = api.device("POST", "register-token", json={"worker_id": "nobody", "fcm_token": "t"})
    assert unknown.status_code == 401


def test_a_token_belongs_to_one_worker(api: Api, clean_stack) -> None:
    api.host(min_workers=10)
    old, new = api.authenticate(), api.authenticate()
    register_token(api, old, "tok-shared")
    register_token(api, new, "tok-shared")  # the app re-installed: a new identity, same device
    assert api.status()["pool"]["registered"] == 1


def test_push_command_sends_a_type_to_every_registered_worker(
    api: Api, clean_stack, capsys
) -> None:
    import json

    from firegrid.commands import main as cli

    api.host(min_workers=10)
    tokens = _join_pool(api, 3)
    code = cli(["push", "mnist", "1.0", "fl_completed", "--base-url", clean_stack.base_url,
                "--token", clean_stack.admin_token])  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["sent"] == 3
    assert Counter(m["token"] for m in pushes(clean_stack.fcm_url, "fl_completed")) == Counter(
        tokens.values()
    )
    bad = cli(["push", "nothing", "1", "fl_completed", "--base-url", clean_stack.base_url,
               "--token", clean_stack.admin_token])  # fmt: skip
    assert bad == 1


def test_simultaneous_rounds_never_over_invite(api: Api, clean_stack) -> None:
    """Ten workers registering at once fire ten worker triggers, plus ticks: one round at a time."""
    from concurrent.futures import ThreadPoolExecutor

    api.host(min_workers=1, max_workers=4, max_diffs=4, over_selection=1.0,
             worker_participation_mode=1)  # fmt: skip
    workers = [api.authenticate() for _ in range(10)]
    with ThreadPoolExecutor(12) as pool:
        jobs = [pool.submit(register_token, api, w, f"tok-{i}") for i, w in enumerate(workers)]
        jobs += [pool.submit(api.tick) for _ in range(4)]
        for job in jobs:
            job.result()
    _settle(2.0)
    invited = [m["token"] for m in pushes(clean_stack.fcm_url, "request_for_cycle")]
    assert len(invited) == len(set(invited)) == 4
    assert api.status()["pool"]["invited"] == 4


def test_availability_lapses_unless_confirmed(api: Api, clean_stack) -> None:
    api.host(min_workers=10, availability_ttl=3)
    worker_id = api.authenticate()
    register_token(api, worker_id, "tok-ttl")
    assert api.status()["pool"]["available"] == 1
    time.sleep(3.2)
    assert api.status()["pool"]["available"] == 0
    confirm = api.device("POST", "worker-status", json={"worker_id": worker_id, "available": True})
    assert confirm.status_code == 200
    assert api.status()["pool"]["available"] == 1
