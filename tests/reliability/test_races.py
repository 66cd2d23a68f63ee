"""Races with the real world, on the real engine: builds beside prunes, containers and tags
appearing between plan and delete, and two sparkjoy processes pruning one engine at once.

The policy is greedy (a negative max age: everything counts as old; nothing kept per
repository), so the planner would delete anything it saw: only the snapshot, the re-checks
and the engine's own refusals stand between a running build and a wrong deletion.
"""

from __future__ import annotations

import subprocess
import threading
from contextlib import closing

import pytest

from sparkjoy.errors import ExitCode
from sparkjoy.executor import Executor, Outcome
from sparkjoy.planner import plan as make_plan

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


def test_a_container_made_between_plan_and_delete_keeps_its_image(clean_engine, count):
    engine = clean_engine
    image = fixtures.busybox_image(engine, "race/used:1")
    sparkjoy = adapter(engine.host)
    snapshot = sparkjoy.snapshot()
    the_plan = make_plan(snapshot, greedy_policy(), now=snapshot.taken_at)
    assert image in {o.id for o in the_plan.deletions}

    container = fixtures.run_container(engine, image, state="created")
    result = Executor(sparkjoy, audit=True).execute(the_plan)

    [outcome] = [r for r in result.results if r.planned.id == image]
    count(race_rounds=1, objects_checked=2, objects_lost=int(image not in inventory(engine).images))
    assert outcome.outcome is Outcome.KEPT
    assert "now used by container" in outcome.detail
    assert image in inventory(engine).images and container in inventory(engine).containers


def test_a_container_made_just_before_the_untag_keeps_the_image_by_the_engines_refusal(proxy, clean_engine, count):
    """Past sparkjoy's re-check, the engine's own 409 (never forced) is the last guard."""
    engine = clean_engine
    image = fixtures.busybox_image(engine, "race/late:1")
    made = []
    proxy.add(Rule("DELETE", r"^/images/race/late:1$",
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
