"""Hosting refuses a process whose closing could not fit in the aggregating function."""

from __future__ import annotations

import pytest

from firegrid import manifest
from firegrid.domain.capacity import (
    PRIVACY_RUNTIME_BYTES,
    aggregation_bytes,
    check_aggregation_fits,
)
from firegrid.domain.config import ServerConfig
from firegrid.domain.diffs import TensorSpec
from firegrid.domain.errors import BadRequest
from firegrid.services import hosting
from firegrid.wire import status_of
from tests.edge import call
from tests.unit.test_services import host_body

GIB = 2**30


def _schema(params: int, tensors: int = 4) -> dict[str, TensorSpec]:
    return {f"layer{i}.weight": TensorSpec("float32", (params // tensors,)) for i in range(tensors)}


def _config(aggregation: str, **extra: object) -> ServerConfig:
    return ServerConfig.parse(
        {"cycle_length": 60, "num_cycles": 1, "aggregation": aggregation} | extra
    )


def test_the_aggregating_functions_memory_comes_from_the_manifest() -> None:
    closers = {spec.name for spec in manifest.FUNCTIONS if spec.aggregates}
    assert closers == {"on-cycle-written", "on-group-written", "tick"}
    assert manifest.aggregation_memory_bytes() == 4 * GIB
    assert [manifest.memory_bytes(m) for m in ("512Mi", "2GiB", "1G")] == [2**29, 2 * GIB, 10**9]
    with pytest.raises(ValueError, match="not like"):
        manifest.memory_bytes("2 GB")


@pytest.mark.parametrize("aggregation", ["median", "trimmed_mean"])
def test_robust_rules_fit_a_million_parameters_whatever_the_cohort(aggregation) -> None:
    """Sliced, their memory hardly grows with K: 1M parameters and 100,000 reports fit 2 GiB
    (held whole, 100,000 float64 copies of the model would need 800 GB)."""
    schema = _schema(1_000_000)
    small = aggregation_bytes(schema, _config(aggregation, max_workers=10))
    large = aggregation_bytes(schema, _config(aggregation, max_workers=100_000))
    check_aggregation_fits(schema, _config(aggregation, max_workers=100_000), 2 * GIB)
    assert large - small < 400 * 2**20  # the reports' bookkeeping, not their diffs


@pytest.mark.parametrize("aggregation", ["fedavg", "mean", "median", "trimmed_mean"])
def test_a_model_too_large_for_the_function_is_refused(aggregation) -> None:
    schema = _schema(150_000_000, tensors=100)  # 600 MB of float32
    with pytest.raises(BadRequest) as refused:
        check_aggregation_fits(schema, _config(aggregation, max_workers=10), 2 * GIB)
    assert refused.value.code == "aggregation_too_large"
    assert f"'{aggregation}'" in refused.value.message
    check_aggregation_fits(schema, _config(aggregation, max_workers=10), 8 * GIB)


def test_many_tensors_times_many_reports_are_refused_for_the_robust_rules_only() -> None:
    schema = _schema(2000, tensors=2000)  # every slice reader keeps every tensor's place
    check_aggregation_fits(schema, _config("fedavg", max_workers=100_000), 2 * GIB)
    check_aggregation_fits(schema, _config("median", max_workers=100), 2 * GIB)
    with pytest.raises(BadRequest, match="lower 'max_workers'"):
        check_aggregation_fits(schema, _config("median", max_workers=100_000), 2 * GIB)
    with pytest.raises(BadRequest, match="up to 100000 reports"):  # no cap: the bound
        check_aggregation_fits(schema, _config("median"), 2 * GIB)


def test_hosting_answers_a_configuration_that_cannot_fit_with_a_400(ctx, tiny) -> None:
    import numpy as np

    from firegrid.tensors import encode_state
    from tests.common import b64

    state = {f"t{i}": np.zeros(1, np.float32) for i in range(2000)}
    body = host_body(tiny, aggregation="median", max_workers=100_000)
    body["model"] = b64(encode_state(state))
    with pytest.raises(BadRequest) as refused:
        call(hosting.host_training, ctx, body)
    assert (status_of(refused.value), refused.value.code) == (400, "aggregation_too_large")
    assert ctx.repo.get_process(hosting.process_id_for("mnist", "1.0")) is None


def test_a_server_optimizers_state_counts_in_the_estimate() -> None:
    """60M parameters fit 4 GiB with plain FedAvg or momentum-free FedAvgM; FedAdam's two
    moments (read, decoded, updated and written: 28 bytes a coordinate each) do not."""
    schema = _schema(60_000_000, tensors=10)
    plain = _config("fedavg", max_workers=10)
    no_state = _config("fedavg", max_workers=10, server_optimizer={"name": "fedavgm"})
    adam = _config("fedavg", max_workers=10, server_optimizer={"name": "fedadam"})
    assert aggregation_bytes(schema, no_state) == aggregation_bytes(schema, plain) + 8 * 6 * 6e6
    assert aggregation_bytes(schema, adam) - aggregation_bytes(schema, no_state) == 56 * 60e6
    check_aggregation_fits(schema, no_state, 4 * GIB)
    with pytest.raises(BadRequest, match="'fedavg' and 'fedadam'") as refused:
        check_aggregation_fits(schema, adam, 4 * GIB)
    assert refused.value.code == "aggregation_too_large"


def test_dp_counts_the_accountants_imports_and_one_tensors_noise() -> None:
    schema = _schema(40_000_000, tensors=8)
    plain = _config("fedavg", max_workers=10)
    dp = _config(
        "fedavg", max_workers=10, dp={"clip_norm": 1, "noise_multiplier": 1, "delta": 1e-5}
    )
    assert aggregation_bytes(schema, dp) - aggregation_bytes(schema, plain) == (
        PRIVACY_RUNTIME_BYTES + 8 * 5_000_000
    )
