"""Races with the real world, on the real engine: builds beside prunes, containers and tags
appearing between plan and delete, and two sparkjoy processes pruning one engine at once.

The policy is greedy (a negative max age: everything counts as old; nothing kept per
repository), so the planner would delete anything it saw: only the snapshot, the re-checks
and the engine's own refusals stand between a running build and a wrong deletion.
"""

from __future__ import annotations

import json
import subprocess
import threading
from contextlib import closing
from datetime import timedelta

import pytest

from sparkjoy.errors import ExitCode
from sparkjoy.executor import Executor, Outcome
from sparkjoy.planner import plan as make_plan
from sparkjoy.policy import Policy

from tests import fixtures
from tests.engine import IsolatedEngine
from tests.faultproxy import Rule, hook, respond
from tests.reliability.support import (
    GREEDY_FLAGS, SPARKJOY, CliRun, adapter, cli_environment, assert_no_traceback, greedy_policy, inventory, library_prune, lost,
    make_world, planned_keys,
)

BUILD_ROUNDS = 20
CONCURRENT_ROUNDS = 3
BUSY = {"message": "a prune operation is already running"}


def _build_started(engine: IsolatedEngine, build: fixtures.RunningBuild, buildkit: bool) -> bool:
    """True once the build holds something a prune could touch (or it is already over)."""
    if not build.running:
        return True
    with closing(engine.client()) as client:
        if buildkit:
            return any(r.get("InUse") for r in client.api.df().get("BuildCache") or [])
        return bool(client.api.containers(all=True, filters={"label": []}) or
                    client.api.containers(all=True))


def test_builds_beside_prunes_always_succeed_and_lose_nothing_made_after_the_snapshot(clean_engine, count):
    engine = clean_engine
    for round_number in range(BUILD_ROUNDS):
        buildkit = round_number % 2 == 0
        # Half the rounds prune at once (the snapshot comes before the build holds anything,
        # the deletions run beside it); half wait until the build holds cache or a container,
        # so the snapshot sees a build in progress.
        wait_for_build = round_number % 4 >= 2
        tag = f"race/{'bk' if buildkit else 'classic'}:r{round_number}"
        dockerfile = fixtures.BUSYBOX_BASE + f"RUN echo {round_number} > /round && sleep 1\n"
        before = inventory(engine)

        with fixtures.start_build(engine, dockerfile, tag, buildkit=buildkit) as build:
            if wait_for_build:
                fixtures.wait_until(lambda: _build_started(engine, build, buildkit), timeout=60,
                                    what="the build to start")
            the_plan, result = library_prune(engine.host)
            image_id = build.wait(timeout=180)  # raises unless the build succeeded

        after = inventory(engine)
        seen = {i.id for i in the_plan.snapshot.images}
        problems = lost(before, after, planned_keys(the_plan))
        if image_id not in seen:
            # Made after the snapshot: it must be there, with its tag.
            if tag not in after.images.get(image_id, ()):
                problems.append(f"round {round_number}: {tag} ({image_id}) was built after the snapshot and is gone")
        count(race_rounds=1, builds=1, objects_checked=before.size, objects_lost=len(problems))
        assert not problems, problems
        assert result.audit == (), result.audit
        assert not any(r.outcome is Outcome.FAILED for r in result.results), result.results


@pytest.mark.parametrize("tags", [["race/used:1"], ["race/used:1", "race/used:2"]], ids=["one tag", "two tags"])
def test_a_container_made_between_plan_and_delete_keeps_its_image(clean_engine, count, tags):
    """Two tags: the re-check sees the container (the first tag would go by name, which the
    engine does even while a container uses the image). One tag: the image is deleted by ID,
    which the engine itself refuses while a container uses it."""
    engine = clean_engine
    image = fixtures.busybox_image(engine, tags[0])
    with closing(engine.client()) as client:
        for extra in tags[1:]:
            client.api.tag(image, *extra.split(":"))
    sparkjoy = adapter(engine.host)
    snapshot = sparkjoy.snapshot()
    the_plan = make_plan(snapshot, greedy_policy(), now=snapshot.taken_at)
    assert image in {o.id for o in the_plan.deletions}

    container = fixtures.run_container(engine, image, state="created")
    result = Executor(sparkjoy, audit=True).execute(the_plan)

    [outcome] = [r for r in result.results if r.planned.id == image]
    count(race_rounds=1, objects_checked=2, objects_lost=int(image not in inventory(engine).images))
    assert outcome.outcome is Outcome.KEPT, outcome
    if len(tags) > 1:
        assert "now used by container" in outcome.detail
    else:
        assert "engine refused" in outcome.detail and container[:12] in outcome.detail
    assert image in inventory(engine).images and container in inventory(engine).containers
    assert set(inventory(engine).images[image]) == set(tags), "no tag went"


def test_a_container_made_just_before_the_deletion_keeps_the_image_by_the_engines_refusal(proxy, clean_engine,
                                                                                          count):
    """Past sparkjoy's re-check, the engine's own 409 (never forced) is the last guard."""
    engine = clean_engine
    image = fixtures.busybox_image(engine, "race/late:1")
    made = []
    proxy.add(Rule("DELETE", rf"^/images/{image}$",
                   hook(lambda request: made.append(fixtures.run_container(engine, image, state="created")),
                        name="container made in the race window")))

    the_plan, result = library_prune(proxy.host)

    [outcome] = [r for r in result.results if r.planned.id == image]
    count(race_rounds=1, objects_checked=2, objects_lost=int(image not in inventory(engine).images))
    assert made, "the hook never ran"
    assert outcome.outcome is Outcome.KEPT, outcome
    assert "engine refused" in outcome.detail
    assert "race/late:1" in inventory(engine).images[image]


def test_an_image_tagged_again_between_plan_and_delete_stays(clean_engine, count):
    """A rebuild that hits the cache gives the same image ID and only tags it again: it is
    about to be used, so it stays, although its tags are the same as in the plan."""
    engine = clean_engine
    image = fixtures.busybox_image(engine, "race/retag:1")
    sparkjoy = adapter(engine.host)
    snapshot = sparkjoy.snapshot()
    the_plan = make_plan(snapshot, greedy_policy(), now=snapshot.taken_at)
    with closing(engine.client()) as client:
        client.api.tag(image, "race/retag", "1")  # the same tag again: only LastTagTime moves

    result = Executor(sparkjoy, audit=True).execute(the_plan)

    [outcome] = [r for r in result.results if r.planned.id == image]
    count(race_rounds=1, objects_checked=1, objects_lost=int(image not in inventory(engine).images))
    assert outcome.outcome is Outcome.KEPT, outcome
    assert "tagged again" in outcome.detail
    assert image in inventory(engine).images


def test_a_kept_image_that_gets_a_child_after_the_plan_is_not_reported_gone(clean_engine, count):
    """A classic build commits a step image (untagged, no child yet: listed, kept for its unknown
    age), then the next step's image on top of it, and from then on the engine lists it no more
    (an untagged parent is hidden). The audit took that for a kept image gone (seen once in
    the builds-beside-prunes race); it asks the engine about an image missing from its listing."""
    engine = clean_engine
    step = fixtures.busybox_image(engine)  # untagged, no time: kept as age unknown
    sparkjoy = adapter(engine.host)
    snapshot = sparkjoy.snapshot()
    the_plan = make_plan(snapshot, greedy_policy(), now=snapshot.taken_at)
    assert step in {o.id for o in the_plan.kept}
    container = fixtures.run_container(engine, step, state="created")
    with closing(engine.client()) as client:
        child = client.api.commit(container)["Id"]  # the next step, on top of it
        assert step not in {i["Id"] for i in client.api.images()}, "the engine still lists the parent"

    result = Executor(sparkjoy, audit=True).execute(the_plan)

    count(race_rounds=1, objects_checked=2, objects_lost=len(result.audit))
    assert result.audit == (), result.audit
    with closing(engine.client()) as client:
        assert client.api.inspect_image(child)["Parent"] == step


def _start_cli(host: str) -> subprocess.Popen:
    environment = cli_environment(host)
    return subprocess.Popen([str(SPARKJOY), "prune", "-f", "--audit", "--format", "json", *GREEDY_FLAGS],
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def test_two_prunes_at_once_never_crash_and_delete_only_inside_both_plans(proxy, clean_engine, count):
    """Two sparkjoy processes on one engine, each told "a prune operation is already running"
    (409) on its first build-cache prunes, as newer engines answer: busy, wait, retry."""
    engine = clean_engine
    for round_number in range(CONCURRENT_ROUNDS):
        make_world(engine, images=3, containers=2, volumes=2)
        fixtures.build(engine, fixtures.BUSYBOX_BASE + f"RUN echo {round_number} > /x\n", f"race/cache:{round_number}")
        before = inventory(engine)
        assert before.build_cache, "the build left no cache to prune"
        proxy.clear()
        busy = proxy.add(Rule("POST", r"^/build/prune$", respond(409, BUSY), times=4))

        processes = [_start_cli(proxy.host), _start_cli(proxy.host)]
        runs = []
        for process in processes:
            stdout, stderr = process.communicate(timeout=180)
            runs.append(CliRun(process.returncode, stdout, stderr))

        after = inventory(engine)
        for run in runs:
            assert_no_traceback(run)
            assert run.stdout, run.stderr
        union_of_plans = set.union(*(run.planned_keys() for run in runs))
        gone = before.keys() - after.keys()
        problems = lost(before, after, union_of_plans)
        count(race_rounds=1, objects_checked=before.size, objects_lost=len(problems))
        for run, other in zip(runs, runs[::-1]):
            assert_no_traceback(run)
            assert run.stdout, run.stderr
            failed = [(o["kind"], o["names"], o["result"], o["detail"]) for o in run.json["objects"]
                      if o.get("result") not in ("deleted", "gone", "kept")]
            # The only complaint allowed: this run's audit found objects it kept gone, and
            # the other run deleted them (it saw them first, say a container this one saw
            # being removed). One sparkjoy per engine avoids even that.
            audit = run.json.get("audit") or []
            assert {(f["kind"], f["id"]) for f in audit} <= other.planned_keys(), audit
            assert run.returncode == (ExitCode.FAILED if audit else ExitCode.OK), (run.stderr, failed)
            results = set(run.results().values())
            assert results <= {"deleted", "gone", "kept"}, results
        assert busy.fired == 4
        assert not problems, problems
        assert gone <= union_of_plans
        assert any(o == "deleted" for run in runs for (kind, _), o in run.results().items() if kind == "build-cache")


def test_a_prune_that_stays_busy_keeps_the_record_and_says_so(proxy, clean_engine, count):
    engine = clean_engine
    fixtures.build(engine, fixtures.BUSYBOX_BASE + "RUN echo busy > /x\n", "race/busy:1")
    before = inventory(engine)
    proxy.add(Rule("POST", r"^/build/prune$", respond(409, BUSY)))

    the_plan, result = library_prune(proxy.host)

    after = inventory(engine)
    records = [r for r in result.results if r.planned.kind.value == "build-cache"]
    count(objects_checked=before.size, objects_lost=len(lost(before, after, planned_keys(the_plan))))
    assert records and all(r.outcome is Outcome.KEPT and "busy" in r.detail for r in records)
    assert before.build_cache <= after.build_cache


def test_a_parent_whose_child_stays_keeps_its_tags(clean_engine, count):
    """The plan deletes a classic build's child and its parent, children first; the child is
    tagged again before its deletion, so its re-check keeps it. The engine would refuse to
    delete the parent then, but it removes the parent's tags one by one first (quietly, as
    the parent has a child): the parent must not be touched at all, or `FROM base:1` breaks."""
    engine = clean_engine
    parent = fixtures.build(engine, fixtures.BUSYBOX_BASE, "race/base:1", buildkit=False)
    child = fixtures.build(engine, "FROM race/base:1\nRUN echo child > /child\n", "race/child:1", buildkit=False)
    sparkjoy = adapter(engine.host)
    snapshot = sparkjoy.snapshot()
    assert {i.id: i.parent_id for i in snapshot.images}[child] == parent
    the_plan = make_plan(snapshot, greedy_policy(), now=snapshot.taken_at)
    assert {parent, child} <= {o.id for o in the_plan.deletions}
    with closing(engine.client()) as client:
        client.api.tag(child, "race/child", "1")  # a rebuild that hit the cache: about to be used

    result = Executor(sparkjoy, audit=True).execute(the_plan)

    outcomes = {r.planned.id: r for r in result.results}
    with closing(engine.client()) as client:
        parent_tags = client.api.inspect_image(parent).get("RepoTags") or []
    count(race_rounds=1, objects_checked=2, objects_lost=int(parent_tags != ["race/base:1"]))
    assert outcomes[child].outcome is Outcome.KEPT, outcomes[child]
    assert outcomes[parent].outcome is Outcome.KEPT and "a child image stays" in outcomes[parent].detail
    assert parent_tags == ["race/base:1"]


# -- a tag that moves or appears in the instant between the re-check and the deletion ----------
#
# The engine has no "delete this tag if it names that image". An image's last tag therefore
# goes with the image, deleted by ID: the engine then deletes the planned image or refuses.
# What no call can guard (a tag before the last that moved, a tag put on a dangling image) is
# reported as removed beyond the plan, and the run is not ok.


def _race_run(proxy, engine, first_delete, nth: int = 1):
    """Plan on the engine, then run through the proxy, calling `first_delete()` just before
    the run's `nth` image deletion (by name or by ID) reaches the engine."""
    sparkjoy = adapter(engine.host)
    snapshot = sparkjoy.snapshot()
    the_plan = make_plan(snapshot, greedy_policy(), now=snapshot.taken_at)
    called = []
    proxy.add(Rule("DELETE", r"^/images/", hook(lambda request: called.append(first_delete()),
                                                 name="a tag changed in the race window"), nth=nth))
    result = Executor(adapter(proxy.host), audit=True, wait=lambda s: None).execute(the_plan)
    assert called, "the hook never ran"
    return the_plan, result


def _tag(engine, image_id: str, tag: str) -> None:
    with closing(engine.client()) as client:
        client.api.tag(image_id, *tag.rsplit(":", 1))


def _tags(engine, image_id: str) -> set[str]:
    return set(inventory(engine).images.get(image_id, ()))


def test_a_last_tag_moved_to_a_new_image_after_the_recheck_leaves_the_new_image_whole(proxy, clean_engine, count):
    engine = clean_engine
    old = fixtures.import_image(engine, 1000, "race/moved:1")
    newer = []

    def move_the_tag():
        newer.append(fixtures.import_image(engine, 1000, seed=7))  # made after the plan: dangling
        _tag(engine, newer[0], "race/moved:1")

    the_plan, result = _race_run(proxy, engine, move_the_tag)

    images = inventory(engine).images
    count(race_rounds=1, objects_checked=2, objects_lost=int(newer[0] not in images))
    assert newer[0] in images and set(images[newer[0]]) == {"race/moved:1"}, "the new image lost its tag"
    [outcome] = [r for r in result.results if r.planned.id == old]
    assert outcome.outcome is Outcome.DELETED and old not in images, outcome
    assert outcome.removed_tags == (), "the tag moved away; this run did not remove it"
    assert result.unplanned == () and result.ok, result


def test_a_tag_added_to_a_single_tag_image_after_the_recheck_makes_the_engine_refuse(proxy, clean_engine, count):
    engine = clean_engine
    image = fixtures.import_image(engine, 1000, "race/one:1")

    the_plan, result = _race_run(proxy, engine, lambda: _tag(engine, image, "race/one:2"))

    images = inventory(engine).images
    count(race_rounds=1, objects_checked=1, objects_lost=int(image not in images))
    [outcome] = [r for r in result.results if r.planned.id == image]
    assert outcome.outcome is Outcome.KEPT and "engine refused" in outcome.detail, outcome
    assert set(images[image]) == {"race/one:1", "race/one:2"}


def test_a_tag_put_on_a_dangling_image_after_the_recheck_is_reported_as_removed_beyond_the_plan(
        proxy, clean_engine, count):
    """No call guards this one: the engine deletes a dangling image by ID, and a single tag
    given to it in that instant with it. The run says so and is not ok."""
    engine = clean_engine
    # Tagged once, so it has a last-tag time; then its tag moved to an image the policy keeps.
    image = fixtures.import_image(engine, 1000, "race/was:1")
    keeper = fixtures.import_image(engine, 1000, "keep/b:1", seed=9)
    _tag(engine, keeper, "race/was:1")
    with closing(engine.client()) as client:
        client.api.remove_image("race/was:1")
    assert not inventory(engine).images[image], "dangling"

    the_plan, result = _race_run(proxy, engine, lambda: _tag(engine, image, "race/late:1"))

    count(race_rounds=1, objects_checked=1, objects_lost=0)
    [outcome] = [r for r in result.results if r.planned.id == image]
    assert outcome.outcome is Outcome.DELETED, outcome
    assert outcome.removed_tags == ("race/late:1",)
    assert result.unplanned and "race/late:1" in result.unplanned[0] and not result.ok, result


def test_a_first_tag_moved_to_a_new_image_after_the_recheck_is_reported_when_the_engine_deletes_that_image(
        proxy, clean_engine, count):
    """The tags before an image's last are removed by name: one moved in that instant acts
    on the image it names now. The engine's answer shows the other image deleted, and the
    run reports it (the window no API call closes)."""
    engine = clean_engine
    image = fixtures.import_image(engine, 1000, ["race/two:a", "race/two:b"])
    newer = []

    def move_the_first_tag():
        newer.append(fixtures.import_image(engine, 1000, seed=8))
        _tag(engine, newer[0], "race/two:a")

    the_plan, result = _race_run(proxy, engine, move_the_first_tag)

    count(race_rounds=1, objects_checked=2, objects_lost=0)
    [outcome] = [r for r in result.results if r.planned.id == image]
    assert outcome.outcome is Outcome.DELETED, outcome
    assert not result.ok and len(result.unplanned) == 1, result
    assert newer[0].removeprefix("sha256:")[:12] in result.unplanned[0]
    assert newer[0] not in inventory(engine).images


def test_a_middle_tag_of_three_moved_to_a_new_image_is_reported(proxy, clean_engine):
    """Three tags: the second untag by name (the run's second DELETE) meets race/three:b
    moved to a new, otherwise untagged image, which the engine then deletes."""
    engine = clean_engine
    image = fixtures.import_image(engine, 1000, ["race/three:a", "race/three:b", "race/three:c"])
    newer = []

    def move():
        newer.append(fixtures.import_image(engine, 1000, seed=22))
        _tag(engine, newer[0], "race/three:b")

    the_plan, result = _race_run(proxy, engine, move, nth=2)

    [outcome] = [r for r in result.results if r.planned.id == image]
    assert outcome.outcome is Outcome.DELETED, outcome
    assert newer[0] not in inventory(engine).images  # the unguardable loss ...
    assert not result.ok and any(newer[0].removeprefix("sha256:")[:12] in u for u in result.unplanned), result


def test_a_classic_child_built_in_the_window_keeps_a_single_tag_image(proxy, clean_engine):
    """No container check for a one-tag image: the engine's refusal by ID (a child depends
    on it) is the guard."""
    engine = clean_engine
    base = fixtures.build(engine, fixtures.BUSYBOX_BASE, "race/base1:1", buildkit=False)
    children = []

    def build_child():
        children.append(fixtures.build(engine, "FROM race/base1:1\nRUN echo c > /c\n", "keep/child:1",
                                       buildkit=False))

    the_plan, result = _race_run(proxy, engine, build_child)

    [outcome] = [r for r in result.results if r.planned.id == base]
    assert outcome.outcome is Outcome.KEPT and "engine refused" in outcome.detail, outcome
    assert _tags(engine, base) == {"race/base1:1"}
    assert children[0] in inventory(engine).images


def test_a_single_tag_image_renamed_in_the_window_is_deleted_with_its_new_name(proxy, clean_engine):
    """`docker tag img race/ren:new && docker rmi race/ren:old` in the window: the image has
    exactly one tag again, one the plan never saw, and the engine's delete by ID removes any
    single tag. No API call guards it: the run must report it as beyond the plan."""
    engine = clean_engine
    image = fixtures.import_image(engine, 1000, "race/ren:old")

    def rename():
        _tag(engine, image, "race/ren:new")
        with closing(engine.client()) as client:
            client.api.remove_image("race/ren:old")

    the_plan, result = _race_run(proxy, engine, rename)

    [outcome] = [r for r in result.results if r.planned.id == image]
    assert image not in inventory(engine).images, "the engine deleted the renamed image by ID"
    assert outcome.outcome is Outcome.DELETED and outcome.removed_tags == ("race/ren:new",), outcome
    assert not result.ok and any("race/ren:new" in u for u in result.unplanned), result


def test_a_first_tag_moved_to_an_image_with_other_tags_is_reported_and_not_claimed(proxy, clean_engine):
    """The tag moves (`docker tag other race/two:a`) onto an image that has a tag of its own,
    just before the run's untag of race/two:a by name. The engine removes it from that image,
    which keeps its other tag, and its answer reads like the planned untag: only its events
    tell. The run reports the tag as removed beyond the plan and does not claim it among the
    planned image's removed tags."""
    engine = clean_engine
    image = fixtures.import_image(engine, 1000, ["race/two:a", "race/two:b"])
    other = fixtures.import_image(engine, 1000, "keep/n:1", seed=21)  # kept by the policy

    the_plan, result = _race_run(proxy, engine, lambda: _tag(engine, other, "race/two:a"))

    [outcome] = [r for r in result.results if r.planned.id == image]
    assert outcome.outcome is Outcome.DELETED, outcome
    assert "race/two:a" not in _tags(engine, other), "the engine removed the moved tag from the other image"
    assert not result.ok and any("race/two:a" in u and other.removeprefix("sha256:")[:12] in u
                                 for u in result.unplanned), result
    assert "race/two:a" not in outcome.removed_tags, outcome.removed_tags


def test_a_tag_moved_away_after_its_untag_is_not_reported(proxy, clean_engine):
    """The other way round: the run untags race/three:a, and only then is race/three:a put on
    another image (the hook runs before the run's second DELETE). The tag is on that image,
    whole: nothing went beyond the plan."""
    engine = clean_engine
    image = fixtures.import_image(engine, 1000, ["race/three:a", "race/three:b"])
    other = fixtures.import_image(engine, 1000, "keep/m:1", seed=23)

    the_plan, result = _race_run(proxy, engine, lambda: _tag(engine, other, "race/three:a"), nth=2)

    [outcome] = [r for r in result.results if r.planned.id == image]
    assert outcome.outcome is Outcome.DELETED, outcome
    assert "race/three:a" in _tags(engine, other)
    assert result.ok and result.unplanned == (), result


def test_a_stopped_container_that_ran_again_since_the_plan_is_kept(clean_engine):
    """The plan judged the container by its finish time (perhaps a remembered one); it ran
    and stopped again before the deletion. The re-check reads the finish time afresh: the
    container is no longer as old as the plan thought, and stays."""
    engine = clean_engine
    image = fixtures.busybox_image(engine, "race/box:1")
    stopped = fixtures.run_container(engine, image, state="exited")
    sparkjoy = adapter(engine.host)
    snapshot = sparkjoy.snapshot()
    the_plan = make_plan(snapshot, greedy_policy(), now=snapshot.taken_at)
    assert stopped in {o.id for o in the_plan.deletions}

    with closing(engine.client()) as client:
        container = client.containers.get(stopped)
        container.start()
        container.wait(timeout=60)
    result = Executor(sparkjoy, audit=True, wait=lambda s: None).execute(the_plan)

    [outcome] = [r for r in result.results if r.planned.id == stopped]
    assert outcome.outcome is Outcome.KEPT and "ran again" in outcome.detail, outcome
    assert stopped in inventory(engine).containers


def test_events_that_cannot_tell_whether_a_tag_moved_are_said_so(proxy, clean_engine):
    """The engine keeps its last 256 events: an answer that long may have lost the ones that
    matter. The deletion stands, and its result says the check could not be made."""
    engine = clean_engine
    image = fixtures.import_image(engine, 1000, ["race/full:a", "race/full:b"])
    full = [{"Type": "container", "Action": "start", "Actor": {"ID": f"{n:064x}"}, "time": 1, "timeNano": n}
            for n in range(256)]
    stream = "".join(json.dumps(event) + "\n" for event in full)  # the engine's form: one object a line
    proxy.add(Rule("GET", r"^/events$", respond(200, stream), name="a full event buffer"))

    snapshot = adapter(engine.host).snapshot()
    result = Executor(adapter(proxy.host), audit=True, wait=lambda s: None).execute(
        make_plan(snapshot, greedy_policy(), now=snapshot.taken_at))

    [outcome] = [r for r in result.results if r.planned.id == image]
    assert outcome.outcome is Outcome.DELETED, outcome
    assert "is not known" in outcome.detail and "as many as the engine keeps" in outcome.detail, outcome.detail


def test_a_kept_container_its_owner_removes_after_the_plan_is_no_audit_finding(clean_engine, count):
    """A classic build removes its step containers, an exited `--rm` container goes by itself:
    sparkjoy removes a container only when its plan deletes it, so a kept one gone is not its
    doing, and the audit no longer fails the run for it."""
    engine = clean_engine
    image = fixtures.busybox_image(engine, "race/owned:1")
    owned = fixtures.run_container(engine, image, state="exited")  # young: kept by a 1h max age
    sparkjoy = adapter(engine.host)
    snapshot = sparkjoy.snapshot()
    the_plan = make_plan(snapshot, Policy(max_age=timedelta(hours=1), keep_recent=0), now=snapshot.taken_at)
    assert owned in {o.id for o in the_plan.kept}
    with closing(engine.client()) as client:
        client.api.remove_container(owned)  # its owner's doing

    result = Executor(sparkjoy, audit=True).execute(the_plan)

    count(race_rounds=1, objects_checked=1, objects_lost=len(result.audit))
    assert result.audit == (), result.audit
