"""An eviction plan names the images whose answers pulled others in (Plan.ranked): a pick's
children go with it, out of least-recently-used order, so that pick's last-tag time decides
their deletion and is read afresh before the run (executor.ranks_changed). Found by a review:
with V remembered as older than it is, eviction took V and its child D (used 3 days ago)
instead of B (5 days); V's re-check kept V, and nothing checked what D's deletion rested on."""

from __future__ import annotations

from datetime import timedelta

from sparkjoy.daemon.watermarks import eviction_policy, plan_eviction
from sparkjoy.planner import plan
from sparkjoy.policy import Policy

from tests.unit.builders import NOW, ago, image, layers, snapshot


def _eviction(v_tagged, keep_recent: int = 0):
    shot = snapshot([
        image("sha256:b", "old:1", tagged=ago(days=5), layer_list=layers(("b", 100))),
        image("sha256:v", "v:1", tagged=v_tagged, layer_list=layers(("v", 10))),
        image("sha256:d", "d:1", tagged=ago(days=3), parent="sha256:v", layer_list=layers(("v", 10), ("d", 100))),
    ])
    policy = Policy(max_age=timedelta(days=7), keep_recent=keep_recent)
    return plan_eviction(plan(shot, eviction_policy(policy), now=NOW), 100)


def test_the_image_that_pulled_its_children_into_an_eviction_is_read_afresh_first() -> None:
    fresh, stale = _eviction(ago(hours=1)), _eviction(ago(days=10))
    assert {o.id for o in fresh.plan.deletions} == {"sha256:b"}  # the least recently used
    assert {o.id for o in stale.plan.deletions} == {"sha256:d", "sha256:v"}  # V, and D with it
    assert "sha256:v" in stale.plan.ranked  # so its true time is read before D goes
    assert "sha256:v" not in fresh.plan.ranked and "sha256:b" not in stale.plan.ranked
