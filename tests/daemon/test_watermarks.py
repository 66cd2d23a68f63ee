"""Eviction under disk pressure: least recently used first, images and build cache in one budget."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparkjoy.daemon.watermarks import eviction_policy, plan_eviction
from sparkjoy.model import Kind
from sparkjoy.planner import Decision, Memory, plan
from sparkjoy.policy import Policy
from sparkjoy.usage import LayerLedger, engine_usage
from tests.unit.builders import NOW, ago, container, image, layers, record, snapshot
from tests.unit.test_planner_properties import build_policy, snapshots

MB = 1_000_000
POLICY = Policy(max_age=timedelta(hours=6), keep_recent=0)


def evict(snap, need: int, policy: Policy = POLICY, memory: Memory = Memory()):
    return plan_eviction(plan(snap, eviction_policy(policy), memory, now=NOW), need)


def deleted(eviction) -> list[str]:
    return [o.id for o in eviction.plan.deletions]


def test_the_least_recently_used_go_first_across_images_and_build_cache_until_enough_is_freed() -> None:
    snap = snapshot(
        images=[image("old", "app:1", tagged=ago(hours=3), layer_list=layers(("old", 30 * MB))),
                image("new", "app:2", tagged=ago(hours=1), layer_list=layers(("new", 30 * MB)))],
        build_cache=[record("cache", last_used=ago(hours=2), size=30 * MB)],
    )

    eviction = evict(snap, 50 * MB)

    assert sorted(deleted(eviction)) == ["cache", "old"]
    assert eviction.met and eviction.predicted_bytes == 60 * MB
    kept = {o.id: o.reason for o in eviction.plan.kept}
    assert kept["new"].startswith("not needed")


def test_objects_younger_than_the_max_age_are_evicted_too_when_the_disk_needs_it() -> None:
    snap = snapshot(images=[image("young", "app:1", tagged=ago(minutes=5), layer_list=layers(("y", 10 * MB)))])

    eviction = evict(snap, 5 * MB)

    assert deleted(eviction) == ["young"]
    assert "least recently used" in eviction.plan.deletions[0].reason


def test_last_use_remembered_by_the_daemon_counts_as_recent() -> None:
    snap = snapshot(images=[
        image("tagged-long-ago-but-used", "a:1", tagged=ago(days=3), layer_list=layers(("a", 10 * MB))),
        image("tagged-yesterday", "b:1", tagged=ago(days=1), layer_list=layers(("b", 10 * MB))),
    ])
    memory = Memory(last_used={"tagged-long-ago-but-used": ago(minutes=1)})

    assert deleted(evict(snap, 5 * MB, memory=memory)) == ["tagged-yesterday"]


def test_shared_layers_are_counted_once_so_both_sharers_go_when_their_bytes_are_needed() -> None:
    base = ("base", 40 * MB)
    snap = snapshot(images=[
        image("one", "a:1", tagged=ago(hours=3), layer_list=layers(base, ("one", 5 * MB))),
        image("two", "b:1", tagged=ago(hours=2), layer_list=layers(base, ("two", 5 * MB))),
        image("three", "c:1", tagged=ago(hours=1), layer_list=layers(("three", 60 * MB))),
    ])

    eviction = evict(snap, 45 * MB)

    assert sorted(deleted(eviction)) == ["one", "two"]
    assert eviction.predicted_bytes == 50 * MB


def test_images_in_use_excluded_or_kept_recent_are_never_evicted_and_the_shortfall_is_reported() -> None:
    snap = snapshot(
        images=[image("running", "svc:1", tagged=ago(days=9), layer_list=layers(("r", 50 * MB))),
                image("excluded", "redis:7", tagged=ago(days=9), layer_list=layers(("x", 50 * MB))),
                image("spare", "app:1", tagged=ago(days=9), layer_list=layers(("s", 10 * MB)))],
        containers=[container("c1", "running", "running")],
    )

    eviction = evict(snap, 100 * MB, Policy(keep_recent=0, exclude=("redis:*",)))

    assert deleted(eviction) == ["spare"]
    assert not eviction.met and eviction.shortfall == 90 * MB
    assert eviction.protected == {"in use by a container": 1, "excluded": 1}
    assert "cannot get under the low watermark" in eviction.describe()
    assert "90MB short" in eviction.describe()


def test_keep_recent_per_repository_still_holds_under_pressure() -> None:
    snap = snapshot(images=[image(f"v{n}", f"app:{n}", tagged=ago(hours=10 - n), layer_list=layers((f"v{n}", MB)))
                            for n in range(4)])

    eviction = evict(snap, 100 * MB, Policy(keep_recent=2))

    assert sorted(deleted(eviction)) == ["v0", "v1"]


def test_a_cache_record_chosen_takes_its_children_first() -> None:
    snap = snapshot(build_cache=[
        record("parent", last_used=ago(hours=5), size=10 * MB),
        record("child", parent="parent", last_used=ago(hours=1), size=1 * MB),
        record("other", last_used=ago(hours=3), size=10 * MB),
    ])

    eviction = evict(snap, 5 * MB)

    assert deleted(eviction) == ["child", "parent"]


def test_nothing_is_evicted_when_nothing_must_go() -> None:
    snap = snapshot(images=[image("a", "a:1", tagged=ago(days=3), layer_list=layers(("a", MB)))])

    eviction = evict(snap, 0)

    assert eviction.plan.deletions == () and eviction.met


def test_stopped_containers_and_volumes_are_left_to_the_policy() -> None:
    snap = snapshot(
        images=[image("img", "a:1", tagged=ago(days=3), layer_list=layers(("a", MB)))],
        containers=[container("stopped", "img", "exited", finished=ago(days=3), size_rw=5 * MB)],
    )

    eviction = evict(snap, 10 * MB)

    assert deleted(eviction) == []
    assert {o.kind for o in eviction.plan.objects if o.decision is Decision.KEEP} == {Kind.CONTAINER, Kind.IMAGE}


# -- properties on random snapshots (the planner's own generators) ---------------------


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated=snapshots(), policy_seed=st.integers(0, 2**32 - 1), fraction=st.floats(0, 1.2))
def test_eviction_picks_only_what_the_rules_allow_oldest_first_and_frees_what_it_predicts(
    generated, policy_seed, fraction
) -> None:
    snap, memory = generated
    eligible = plan(snap, eviction_policy(build_policy(policy_seed)), memory, now=NOW)
    need = int(engine_usage(snap) * fraction)

    eviction = plan_eviction(eligible, need)

    candidates = {o.key: o for o in eligible.deletions if o.kind in (Kind.IMAGE, Kind.BUILD_CACHE)}
    chosen = [o.key for o in eviction.plan.deletions]
    assert set(chosen) <= set(candidates), "only objects the planner's rules let go"
    assert chosen == [o.key for o in eligible.objects if o.key in set(chosen)], "in the planner's safe order"
    freed = LayerLedger(snap).freed(chosen).total
    assert eviction.predicted_bytes == freed
    assert eviction.met == (freed >= need)
    if not eviction.met:
        assert set(chosen) == set(candidates), "short of the target only when everything eligible goes"
    if need > 0 and candidates:
        oldest = min(candidates.values(), key=lambda o: (o.reference_time or NOW.min.replace(tzinfo=NOW.tzinfo),
                                                         o.kind.value, o.id))
        assert oldest.key in chosen, "the least recently used goes first"
