"""What a hostile device can no longer do, on the in-memory fakes: claim any sample count,
race twin reports, guess or reuse another process's worker id, send oversized diffs."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from firegrid.domain.cycle import CycleStatus
from firegrid.domain.diffs import max_file_bytes
from firegrid.domain.errors import BadRequest, Conflict, PayloadTooLarge, Unauthorized
from firegrid.domain.keys import stable_id
from firegrid.services import devices, hosting, operator
from firegrid.services.context import Context
from firegrid.tensors import encode_state
from firegrid.wire import status_of
from tests.common import State, b64
from tests.edge import call
from tests.unit.test_services import (
    begin_closing,
    checkpoint,
    constant_diff,
    host,
    host_body,
    join,
    login,
    on_report,
    send_report,
)

Tiny = tuple[State, bytes]


def diff_objects(ctx: Context, process_id: str) -> list[str]:
    prefix = f"processes/{process_id}/diffs/"
    return [name for name in ctx.blobs.objects if name.startswith(prefix)]


# -- bounded contributions -----------------------------------------------------


def test_a_report_above_max_num_samples_is_a_clear_400(ctx, tiny: Tiny) -> None:
    process_id = host(ctx, tiny, max_num_samples=100)
    worker_id, key = join(ctx)

    with pytest.raises(BadRequest, match=r"'num_samples' must be <= 100") as refused:
        send_report(ctx, worker_id, key, constant_diff(tiny, 0.1), num_samples=101)

    assert refused.value.code == "too_many_samples"
    assert diff_objects(ctx, process_id) == []
    assert send_report(ctx, worker_id, key, constant_diff(tiny, 0.1), num_samples=100)


def test_the_default_cap_is_a_million_samples(ctx, tiny: Tiny) -> None:
    host(ctx, tiny)
    worker_id, key = join(ctx)
    with pytest.raises(BadRequest, match="must be <= 1000000"):
        send_report(ctx, worker_id, key, constant_diff(tiny, 0.1), num_samples=2**63 - 1)
    with pytest.raises(BadRequest, match="must be <= 9223372036854775807"):
        send_report(ctx, worker_id, key, constant_diff(tiny, 0.1), num_samples=2**63)


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"max_num_samples": 0}, "'max_num_samples' must be >= 1"),
        ({"max_num_samples": 10**13}, "'max_num_samples' must be <= 1000000000000"),
        ({"max_weight_fraction": 0}, "'max_weight_fraction' must be > 0"),
        ({"max_weight_fraction": 1.5}, "'max_weight_fraction' must be <= 1"),
        ({"max_weight_fraction": 0.5, "aggregation": "median"}, "applies to 'fedavg' only"),
        ({"max_workers": 10**12}, "'max_workers' must be <= 100000"),
        ({"num_cycles": 2**63}, "'num_cycles' must be <= 9223372036854775807"),
        ({"cycle_length": 10**400}, "'cycle_length' is out of range"),
        ({"cycle_length": 10**9}, "'cycle_length' must be <= 31622400"),
    ],
)
def test_unstorable_or_unbounded_configs_are_refused(ctx, tiny: Tiny, server, message) -> None:
    with pytest.raises(BadRequest, match=message) as refused:
        host(ctx, tiny, **server)
    assert refused.value.code == "invalid_config"
    assert ctx.repo.processes == {}


def test_max_weight_fraction_caps_one_huge_count_at_closing(ctx, tiny: Tiny) -> None:
    process_id = host(ctx, tiny, max_diffs=3, max_weight_fraction=0.5, max_num_samples=10**9)
    counts_and_values = [(10, 0.1), (10, 0.1), (10**9, -5.0)]
    for count, value in counts_and_values:
        worker_id, key = join(ctx)
        send_report(ctx, worker_id, key, constant_diff(tiny, value), num_samples=count)
    on_report(ctx, process_id)

    old, new = checkpoint(ctx, process_id, 1), checkpoint(ctx, process_id, 2)
    # Weights 10, 10 and (capped) 20: the huge count holds exactly half of the average.
    step = (10 * 0.1 + 10 * 0.1 + 20 * -5.0) / 40
    for name in old:
        np.testing.assert_allclose(new[name], old[name] - step, rtol=1e-6)
    record = ctx.repo.get_cycle(process_id, 1)
    assert record.status is CycleStatus.COMPLETED
    assert record.summary.total_samples == 10**9 + 20  # the true total, a Python int


# -- twin reports ----------------------------------------------------------------


def test_twin_reports_count_once_and_keep_the_counted_diff(ctx, tiny: Tiny) -> None:
    process_id = host(ctx, tiny, max_diffs=2)
    worker_id, key = join(ctx)
    diff = constant_diff(tiny, 0.1)
    outcomes: list[Any] = []
    start = threading.Barrier(8)

    def twin() -> None:
        start.wait()
        try:
            outcomes.append(send_report(ctx, worker_id, key, diff, num_samples=3))
        except Conflict as conflict:
            outcomes.append(conflict.code)

    threads = [threading.Thread(target=twin) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes.count({"status": "success"}) == 1
    assert sorted(o for o in outcomes if o != {"status": "success"}) == ["already_reported"] * 7
    assignment = ctx.repo.get_assignment(process_id, 1, worker_id)
    assert diff_objects(ctx, process_id) == [assignment.diff_object]  # counted one kept, no orphan


def test_a_report_that_loses_to_the_closing_leaves_no_object(ctx, tiny: Tiny) -> None:
    process_id = host(ctx, tiny, max_diffs=2)
    worker_id, key = join(ctx)
    record_report = ctx.repo.record_report

    def cycle_closes_first(*args: Any) -> None:
        begin_closing(ctx, process_id, 1)
        record_report(*args)

    ctx.repo.record_report = cycle_closes_first
    with pytest.raises(Conflict, match="closed"):
        send_report(ctx, worker_id, key, constant_diff(tiny, 0.1))
    assert diff_objects(ctx, process_id) == []


# -- worker ids are credentials -------------------------------------------------------


def test_worker_ids_cannot_be_computed_from_public_data(ctx, tiny: Tiny) -> None:
    process_id = host(ctx, tiny, authentication={"secret": "abc"})
    alice = login(ctx, "valid:alice")

    assert login(ctx, "valid:alice") == alice  # PyGrid clients keep their id
    import hashlib

    subject = hashlib.sha256(b"sub:alice").hexdigest()
    assert alice != stable_id("worker", process_id, subject)  # the old, public derivation
    assert process_id not in alice


def test_an_unknown_worker_and_another_process_worker_look_the_same(ctx, tiny: Tiny) -> None:
    host(ctx, tiny)
    other_body = host_body(tiny)
    other_body["client_config"] = other_body["client_config"] | {"name": "cifar"}
    call(hosting.host_training, ctx, other_body)
    worker_of_cifar = call(devices.authenticate, ctx, {"model_name": "cifar"})["worker_id"]

    answers = []
    for worker_id in (worker_of_cifar, "0" * 32, "nobody", "../workers/x", "__x__"):
        with pytest.raises(Unauthorized) as refused:
            call(devices.request_cycle, ctx, {"worker_id": worker_id, "model": "mnist"})
        answers.append((refused.value.message, refused.value.code))
    assert all(answer == answers[0] for answer in answers)
    assert answers[0][1] == "unknown_worker"


@pytest.mark.parametrize(
    "endpoint",
    [
        lambda ctx, w: call(
            devices.report,
            ctx,
            {"worker_id": w, "request_key": "1.0.x", "diff": "AA==", "num_samples": 1},
        ),
        lambda ctx, w: call(
            devices.get_model, ctx, {"worker_id": w, "request_key": "1.0.x", "model_id": "m"}
        ),
        lambda ctx, w: call(
            operator.post_metrics,
            ctx,
            {"worker_id": w, "stats": [{"cycle_id": 1, "accuracy": 1, "num_samples": 1}]},
        ),
        lambda ctx, w: call(devices.speed_test, ctx, {"worker_id": w, "random": "1"}),
    ],
)
def test_every_endpoint_refuses_ids_it_did_not_issue(ctx, tiny: Tiny, endpoint) -> None:
    host(ctx, tiny)
    for worker_id in ("0" * 32, "nobody/../x", "__x__", "x" * 129):
        with pytest.raises((Unauthorized, BadRequest)) as refused:
            endpoint(ctx, worker_id)
        assert status_of(refused.value) in (400, 401)


# -- bounded uploads and diffs ----------------------------------------------------


def test_an_inline_diff_larger_than_the_model_allows_is_413(ctx, tiny: Tiny) -> None:
    process_id = host(ctx, tiny)
    worker_id, key = join(ctx)
    schema_bound = max_file_bytes(ctx.repo.get_process(process_id).schema)
    body = {
        "worker_id": worker_id,
        "request_key": key,
        "diff": b64(b"\0" * (schema_bound + 1)),
        "num_samples": 1,
    }
    with pytest.raises(PayloadTooLarge):
        call(devices.report, ctx, body)


def upload(ctx: Context, worker_id: str, key: str, data: bytes) -> dict[str, Any]:
    grant = call(devices.report_upload_url, ctx, {"worker_id": worker_id, "request_key": key})
    name = grant["upload_url"].removeprefix(ctx.blobs.URL_BASE).split("?")[0]
    ctx.blobs.put(name, data)
    return grant | {"object": name}


def test_upload_urls_carry_the_models_content_length_range(ctx, tiny: Tiny) -> None:
    process_id = host(ctx, tiny)
    worker_id, key = join(ctx)

    grant = call(devices.report_upload_url, ctx, {"worker_id": worker_id, "request_key": key})

    bound = max_file_bytes(ctx.repo.get_process(process_id).schema)
    assert grant["max_bytes"] == bound
    assert grant["headers"]["x-goog-content-length-range"] == f"0,{bound}"
    name = grant["upload_url"].removeprefix(ctx.blobs.URL_BASE).split("?")[0]
    assert ctx.blobs.signed_headers[name] == grant["headers"]
    assert worker_id not in name  # object names carry a pseudonym, not the credential


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\0" * 10**6, PayloadTooLarge),
        (b"not safetensors", BadRequest),
        (encode_state({"w": np.zeros(3, np.float32)}), BadRequest),
    ],
)
def test_a_refused_upload_is_deleted(ctx, tiny: Tiny, data: bytes, error) -> None:
    process_id = host(ctx, tiny)
    worker_id, key = join(ctx)
    name = upload(ctx, worker_id, key, data)["object"]

    body = {"worker_id": worker_id, "request_key": key, "uploaded": True, "num_samples": 1}
    with pytest.raises(error):
        call(devices.report, ctx, body)

    assert name not in ctx.blobs.objects
    assert diff_objects(ctx, process_id) == []


def test_an_upload_that_a_twin_already_counted_is_409(ctx, tiny: Tiny) -> None:
    host(ctx, tiny, max_diffs=2)
    worker_id, key = join(ctx)
    upload(ctx, worker_id, key, encode_state(constant_diff(tiny, 0.1)))
    body = {"worker_id": worker_id, "request_key": key, "uploaded": True, "num_samples": 1}
    assert call(devices.report, ctx, body) == {"status": "success"}

    with pytest.raises(Conflict) as twin:
        call(devices.report, ctx, body)
    assert twin.value.code == "already_reported"


# -- metrics and speed test ---------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"cycle_id": 2}, "'cycle_id' must be <= 1"),
        ({"cycle_id": 2**64}, "'cycle_id' must be <= 9223372036854775807"),
        ({"set": "validation"}, "'set' must be one of test, train"),
        ({"loss": 10**400}, "'loss' is out of range"),
        ({"num_samples": 10**7}, "'num_samples' must be <= 1000000"),
    ],
)
def test_metrics_rows_are_bounded(ctx, tiny: Tiny, entry, message) -> None:
    host(ctx, tiny)
    worker_id, _ = join(ctx)
    row = {"cycle_id": 1, "accuracy": 0.5, "num_samples": 3} | entry
    with pytest.raises(BadRequest, match=message):
        call(operator.post_metrics, ctx, {"worker_id": worker_id, "stats": [row]})


def test_the_speed_test_sample_is_for_known_workers(ctx, tiny: Tiny) -> None:
    host(ctx, tiny)
    worker_id = login(ctx)
    sample = call(devices.speed_test, ctx, {"worker_id": worker_id, "random": "1"})
    assert isinstance(sample, bytes) and len(sample) == ctx.settings.speed_test_bytes
    assert (
        call(devices.speed_test, ctx, {"worker_id": worker_id, "random": "1", "is_ping": "1"}) == {}
    )
    with pytest.raises(BadRequest, match="'random' is required"):
        call(devices.speed_test, ctx, {"worker_id": worker_id})
