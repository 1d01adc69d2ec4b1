"""A bounded schemathesis run over every endpoint of the local stack: no 5xx, no response
outside docs/openapi.yaml, no traceback text. `firegrid fuzz --examples N` runs longer."""

from __future__ import annotations

import pytest

from firegrid.local.fuzz import run_fuzz, summary

pytestmark = pytest.mark.integration


def test_generated_requests_get_documented_answers_and_never_a_5xx(clean_stack, tmp_path) -> None:
    result = run_fuzz(clean_stack, examples=8, seed=20261204, report_dir=tmp_path)
    print(summary(result))

    assert result.server_errors == 0, summary(result)
    assert result.failures == [], summary(result)
    assert result.exit_code == 0, result.output[-4000:]
    assert result.cases >= 300
    assert result.statuses.get(200, 0) > 0  # the stateful phase got past authentication
