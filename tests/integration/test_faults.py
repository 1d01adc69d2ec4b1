"""Faults an operator can cause on the local stack: a reported diff object deleted or
overwritten with garbage before its cycle closes. The cycle used to jam in closing for
good; now it closes with the others and says what it left out."""

from __future__ import annotations

import pytest
from google.cloud import firestore, storage

from .support import Api, cycle_seq, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def api(clean_stack) -> Api:
    return Api(clean_stack.base_url, clean_stack.admin_token)


@pytest.mark.parametrize(
    ("damage", "reason"), [("delete", "missing_object"), ("garbage", "invalid_safetensors")]
)
def test_a_lost_or_corrupt_diff_is_left_out_and_the_cycle_closes(
    api: Api, stack_env, damage: str, reason: str
) -> None:
    process_id = api.host(max_diffs=3, min_diffs=2)
    joined = [api.join() for _ in range(3)]
    for worker_id, accepted in joined[:2]:
        assert api.report(worker_id, accepted["request_key"]).status_code == 200
    db = firestore.Client(project=stack_env.project_id)
    victim = joined[0][0]
    path = f"processes/{process_id}/cycles/1/assignments/{victim}"
    blob = (
        storage.Client().bucket(stack_env.bucket).blob(db.document(path).get().get("diff_object"))
    )
    if damage == "delete":
        blob.delete()
    else:
        blob.upload_from_string(b"\0not a diff")

    worker_id, accepted = joined[2]
    assert api.report(worker_id, accepted["request_key"]).status_code == 200
    wait_for(lambda: cycle_seq(api) == 2, what="cycle 1 to close without the lost diff")

    previous = api.status()["previous_cycle"]
    assert previous["status"] == "completed"
    assert (previous["num_diffs"], previous["skipped"]) == (2, {reason: 1})
    assert db.document(path).get().get("skipped") == reason
    checkpoint = api.admin("GET", "retrieve-model", params={"name": "mnist", "checkpoint": "2"})
    assert checkpoint.status_code == 200
