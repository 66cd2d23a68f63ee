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


def test_what_a_run_removed_beyond_its_plan_makes_it_not_ok_and_is_said_in_json_and_text() -> None:
    from datetime import timedelta

    from sparkjoy.executor import ObjectResult, Outcome
    from tests.unit.builders import ago, image

    the_plan = plan(snapshot(images=[image("a", "app:1", tagged=ago(days=30))]),
                    Policy(max_age=timedelta(days=1), keep_recent=0), now=NOW)
    [deletion] = the_plan.deletions
    clean = RunResult(the_plan, (ObjectResult(deletion, Outcome.DELETED, removed_tags=("app:1",)),), 10, 5)
    beyond = RunResult(the_plan, (ObjectResult(deletion, Outcome.DELETED, removed_tags=("app:1", "app:late"),
                                               unplanned=("tag app:late (added to the image since the re-check)",)),),
                       10, 5)

    assert clean.ok and "unplanned" not in report.result_json(clean)
    assert not beyond.ok
    data = report.result_json(beyond)
    assert data["ok"] is False
    assert data["unplanned"] == ["tag app:late (added to the image since the re-check)"]
    [entry] = [o for o in data["objects"] if o["id"] == deletion.id]
    assert entry["unplanned"] == data["unplanned"]
    text = report.render_result(beyond)
    assert "WARNING: removed beyond the plan" in text and "app:late" in text
