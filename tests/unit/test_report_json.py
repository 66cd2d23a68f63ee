"""The JSON contract's numbers: what other tools read from `sparkjoy prune --format json`."""

from __future__ import annotations

from sparkjoy import report
from sparkjoy.executor import RunResult
from sparkjoy.planner import plan
from sparkjoy.policy import Policy

from tests.unit.builders import NOW, snapshot


def test_reclaimed_bytes_is_never_negative_when_the_engine_grew_during_the_run() -> None:
    """Measured reclaim is usage before minus after; a build writing during the run can make
    that negative. The contract (and the table's "Total reclaimed space") report 0 then."""
    the_plan = plan(snapshot(), Policy(), now=NOW)
    result = RunResult(the_plan, (), usage_before=1_000, usage_after=5_000)
    data = report.result_json(result)
    assert data["reclaimed_bytes"] == 0
    assert "Total reclaimed space: 0B" in report.render_result(result)
