"""An image's untagged parents (classic builds), on the real engine. ``/system/df`` does not
list an untagged image that has a child, so such a parent is in no plan as itself: the engine
is never let delete parents with a child (``noprune``), and the executor deletes the ones the
plan names with their child (``PlannedObject.hidden_parents``), only when the whole engine is
in scope.
"""

from __future__ import annotations

from contextlib import closing

from sparkjoy.executor import Executor, Outcome
from sparkjoy.planner import plan as make_plan

from tests import fixtures
from tests.faultproxy import Rule, hook
from tests.reliability.support import adapter, greedy_policy, inventory


def _exists(engine, image_id: str) -> bool:
    with closing(engine.client()) as client:
        return any(i == image_id for i in client.api.images(all=True, quiet=True))


def _tag(engine, image_id: str, tag: str) -> None:
    with closing(engine.client()) as client:
        client.api.tag(image_id, *tag.rsplit(":", 1))


def _classic_base_and_child(engine, base_tag: str, child_tag: str, base_label: str = "other"):
    base = fixtures.build(engine, fixtures.BUSYBOX_BASE + f"LABEL team={base_label}\n", base_tag, buildkit=False)
    child = fixtures.build(engine, f"FROM {base_tag}\nLABEL team=app\nRUN echo child > /child\n", child_tag,
                           buildkit=False)
    return base, child


def test_a_repo_scoped_prune_leaves_an_untagged_base_outside_its_scope(clean_engine):
    """`--repo 'app/*'`: the planner keeps every untagged image ("out of scope: untagged, so in
    no repository matching --repo"). `other/base:1` was rebuilt, so its old image is untagged,
    and, having a child, not even listed. Deleting the child app/c:1 (in scope) must not take
    that base with it; if it does, the run must say so."""
    engine = clean_engine
    old_base, child = _classic_base_and_child(engine, "other/base:1", "app/c:1")
    # A new other/base:1 (a pull, or a build that shares no step) takes the tag.
    _tag(engine, fixtures.import_image(engine, 1000, seed=12), "other/base:1")
    with closing(engine.client()) as client:
        assert not client.api.inspect_image(old_base)["RepoTags"], "the old base is untagged now"

    sparkjoy = adapter(engine.host)
    snapshot = sparkjoy.snapshot()
    the_plan = make_plan(snapshot, greedy_policy(repos=("app/*",)), now=snapshot.taken_at)
    assert child in {o.id for o in the_plan.deletions}
    assert old_base not in {o.id for o in the_plan.deletions}, "the plan does not delete the base"

    result = Executor(sparkjoy, audit=True).execute(the_plan)

    [outcome] = [r for r in result.results if r.planned.id == child]
    assert outcome.outcome is Outcome.DELETED, outcome
    base_gone = not _exists(engine, old_base)
    assert not base_gone or not result.ok, (
        f"the engine deleted the untagged base {old_base[:19]} (outside --repo app/*, never in the plan) "
        f"together with app/c:1, and the run reports ok: unplanned={result.unplanned} audit={result.audit}")
    assert not base_gone, f"the untagged base {old_base[:19]} outside the scope was deleted with app/c:1"


def test_a_base_the_plan_kept_is_not_deleted_with_its_child(proxy, clean_engine):
    """The plan keeps keep/base:1 (excluded) and deletes its classic child app/c:1. Just before
    the child's deletion, keep/base:1 is rebuilt elsewhere (its tag moves to a new image), so
    the old base is an untagged parent: the child's deletion must not take it (the engine would,
    with noprune=False), nor the executor's walk over the child's step images."""
    engine = clean_engine
    base, child = _classic_base_and_child(engine, "keep/base:1", "app/c:1")
    sparkjoy = adapter(engine.host)
    snapshot = sparkjoy.snapshot()
    the_plan = make_plan(snapshot, greedy_policy(), now=snapshot.taken_at)
    assert child in {o.id for o in the_plan.deletions} and base in {o.id for o in the_plan.kept}

    rebuilt = []

    def rebuild_the_base(request):
        if not rebuilt:
            rebuilt.append(fixtures.import_image(engine, 1000, seed=11))
            _tag(engine, rebuilt[0], "keep/base:1")

    proxy.add(Rule("DELETE", r"^/images/", hook(rebuild_the_base, name="base rebuilt in the window"), nth=1))
    result = Executor(adapter(proxy.host), audit=True).execute(the_plan)

    assert rebuilt, "the hook never ran"
    [outcome] = [r for r in result.results if r.planned.id == child]
    assert outcome.outcome is Outcome.DELETED, outcome
    findings = [(f.id, f.problem) for f in result.audit or ()]
    assert _exists(engine, base), (
        f"the kept base {base[:19]} was deleted by the child's deletion (noprune=False); "
        f"audit: {findings}; unplanned: {result.unplanned}; ok: {result.ok}")


def _all_images(engine) -> set[str]:
    with closing(engine.client()) as client:
        return set(client.api.images(all=True, quiet=True))


STEPS = "RUN head -c 300000 /dev/urandom > /a\nRUN head -c 200000 /dev/urandom > /b\nLABEL x=y\n"


def test_a_classic_builds_step_images_go_with_it_and_the_bytes_freed_are_the_bytes_predicted(clean_engine):
    """A classic build leaves an untagged step image per step, unlisted by /system/df. With the
    whole engine in scope they go with the image (the plan names them; each is deleted by ID
    after it), so the layers they share with it are freed, as predicted."""
    engine = clean_engine
    fixtures.build(engine, fixtures.BUSYBOX_BASE, "keep/base:1", buildkit=False)
    before = _all_images(engine)
    child = fixtures.build(engine, "FROM keep/base:1\n" + STEPS, "app/c:1", buildkit=False)
    steps = _all_images(engine) - before - {child}
    assert len(steps) >= 2, f"the classic build left no step images: {steps}"

    sparkjoy = adapter(engine.host)
    snapshot = sparkjoy.snapshot()
    the_plan = make_plan(snapshot, greedy_policy(), now=snapshot.taken_at)
    [planned] = [o for o in the_plan.deletions if o.id == child]
    assert set(planned.hidden_parents) == steps, (planned.hidden_parents, steps)
    usage_before = sparkjoy.usage()
    result = Executor(sparkjoy, audit=True).execute(the_plan, usage_before)

    assert result.ok, result
    assert not (_all_images(engine) & steps), "the step images are still there"
    assert planned.bytes >= 500_000 and result.reclaimed_bytes == planned.bytes, (planned.bytes, result.reclaimed_bytes)


def test_under_repo_a_classic_builds_step_images_stay_and_nothing_they_hold_is_predicted(clean_engine):
    """Under --repo the step images are out of scope (untagged): deleting app/c:1 leaves them,
    and the layers they hold with it, so the plan predicts only what really goes."""
    engine = clean_engine
    fixtures.build(engine, fixtures.BUSYBOX_BASE, "keep/base:1", buildkit=False)
    before = _all_images(engine)
    child = fixtures.build(engine, "FROM keep/base:1\n" + STEPS + "RUN head -c 100000 /dev/urandom > /c\n",
                           "app/c:1", buildkit=False)
    steps = _all_images(engine) - before - {child}
    assert len(steps) >= 3, f"the classic build left no step images: {steps}"

    sparkjoy = adapter(engine.host)
    snapshot = sparkjoy.snapshot()
    the_plan = make_plan(snapshot, greedy_policy(repos=("app/*",)), now=snapshot.taken_at)
    [planned] = [o for o in the_plan.deletions if o.id == child]
    assert planned.hidden_parents == ()
    usage_before = sparkjoy.usage()
    result = Executor(sparkjoy, audit=True).execute(the_plan, usage_before)

    assert result.ok, result
    assert steps <= _all_images(engine), "a step image outside --repo was deleted"
    # The last step's layer is the image's own: that, and only that, is freed.
    assert 100_000 <= planned.bytes < 200_000, planned.bytes
    assert result.reclaimed_bytes == planned.bytes, (planned.bytes, result.reclaimed_bytes)


def test_under_repo_a_base_of_two_tags_whose_child_leaves_step_images_stays_whole(clean_engine):
    """Under --repo 'myorg/*' both myorg/base (two tags) and its classic child myorg/app:1 are
    old. The child's step images stay (untagged: outside the scope), and they are children of
    the base: the engine would refuse the base's deletion after its first tag went by name.
    The plan keeps the base, whole."""
    engine = clean_engine
    base = fixtures.build(engine, fixtures.BUSYBOX_BASE, "myorg/base:1", buildkit=False)
    _tag(engine, base, "myorg/base:latest")
    child = fixtures.build(engine, "FROM myorg/base:1\n" + STEPS, "myorg/app:1", buildkit=False)

    sparkjoy = adapter(engine.host)
    snapshot = sparkjoy.snapshot()
    the_plan = make_plan(snapshot, greedy_policy(repos=("myorg/*",)), now=snapshot.taken_at)
    [kept] = [o for o in the_plan.kept if o.id == base]
    assert "step images" in kept.reason, kept.reason
    result = Executor(sparkjoy, audit=True).execute(the_plan)

    assert result.ok, result
    assert not _exists(engine, child)
    with closing(engine.client()) as client:
        assert sorted(client.api.inspect_image(base)["RepoTags"]) == ["myorg/base:1", "myorg/base:latest"]


def test_a_step_image_that_stays_keeps_the_base_of_its_child_whole(proxy, clean_engine):
    """Unscoped, the step images go after their image; when one stays (here: tagged just
    before the walk reaches it), the base has a child still, and the run must not untag it."""
    engine = clean_engine
    base = fixtures.build(engine, fixtures.BUSYBOX_BASE, "myorg/base:1", buildkit=False)
    _tag(engine, base, "myorg/base:latest")
    before = _all_images(engine)
    child = fixtures.build(engine, "FROM myorg/base:1\n" + STEPS, "myorg/app:1", buildkit=False)
    steps = sorted(_all_images(engine) - before - {child})

    sparkjoy = adapter(engine.host)
    snapshot = sparkjoy.snapshot()
    the_plan = make_plan(snapshot, greedy_policy(), now=snapshot.taken_at)
    [planned] = [o for o in the_plan.deletions if o.id == child]
    assert base in {o.id for o in the_plan.deletions} and planned.hidden_parents

    def tag_the_step(request):
        _tag(engine, planned.hidden_parents[0], "someone/kept:1")

    # The child's deletion by ID is the run's first DELETE; the step is tagged as it goes.
    proxy.add(Rule("DELETE", r"^/images/", hook(tag_the_step, name="a step image tagged"), nth=1))
    result = Executor(adapter(proxy.host), audit=True, wait=lambda s: None).execute(the_plan)

    [outcome] = [r for r in result.results if r.planned.id == child]
    assert outcome.outcome is Outcome.DELETED and "has a name now" in outcome.detail, outcome
    [base_outcome] = [r for r in result.results if r.planned.id == base]
    assert base_outcome.outcome is Outcome.KEPT, base_outcome
    with closing(engine.client()) as client:
        assert sorted(client.api.inspect_image(base)["RepoTags"]) == ["myorg/base:1", "myorg/base:latest"]
        assert client.api.inspect_image(planned.hidden_parents[0])["RepoTags"] == ["someone/kept:1"]
    assert steps
