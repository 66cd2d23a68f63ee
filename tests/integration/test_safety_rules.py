"""Issue 2, "Safety rules" 1-7: each test fails on the real engine if its rule breaks.

Every real prune runs with the audit on and asserts it is clean (see support.execute and
support.cli_prune).
"""

from __future__ import annotations

from contextlib import closing
from datetime import timedelta

import pytest

from sparkjoy.executor import Outcome
from sparkjoy.model import Kind
from sparkjoy.planner import Decision

from tests.fixtures import (
    StepGate,
    BUSYBOX_BASE,
    build,
    busybox_layer,
    import_image,
    load_image,
    run_container,
    start_build,
    wait_until,
)
from tests.integration.support import (
    EVERYTHING_OLD,
    build_cache,
    cli_prune,
    execute,
    image_events,
    inspect_container,
    inventory,
    json_ids,
    json_object,
    make_plan,
    obj,
    outcome_ids,
    policy,
    remove_image_by_hand,
    result_of,
    sj,
    tag,
    tags_of,
    utcnow,
)

MB = 1_000_000
OLD = dict(max_age=EVERYTHING_OLD, keep_recent=0)


def _runnable(engine, tags):
    return load_image(engine, [busybox_layer()], tags)


def _container_in_state(engine, image_id, state):
    if state != "paused":
        return run_container(engine, image_id, state=state)
    container_id = run_container(engine, image_id, state="running")
    with closing(engine.client()) as client:
        client.api.pause(container_id)
    return container_id


class _DeleteSpy:
    """Records every DELETE (and POST) the adapter sends, to check none is forced."""

    def __init__(self, adapter):
        self.calls: list[tuple[str, str, dict]] = []
        transport = adapter._transport
        real = transport.request

        def spy(method, path, params=None, timeout=None):
            if method in ("DELETE", "POST"):
                self.calls.append((method, path, dict(params or {})))
            return real(method, path, params, timeout)

        transport.request = spy

    def forced(self) -> list:
        return [c for c in self.calls
                if c[2].get("force") in (True, "1", "true", 1) or "force=1" in c[1] or "force=true" in c[1]]

    def deletes(self) -> list:
        return [c for c in self.calls if c[0] == "DELETE"]


# -- rule 1 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["running", "paused", "exited", "created"])
def test_rule_1_an_image_used_by_a_container_in_any_state_keeps_all_its_tags(clean_engine, state):
    engine = clean_engine
    used = _runnable(engine, ["used:1", "used:2", "other-repo/used:1"])
    container = _container_in_state(engine, used, state)
    unused = import_image(engine, MB, "unused:1")

    # Containers are not pruned (pruning off), so the image must stay whole.
    the_plan = make_plan(engine, policy(**OLD, containers=False))
    assert obj(the_plan, used).decision is Decision.KEEP
    assert obj(the_plan, used).reason.startswith("in use by container")
    result = execute(engine, the_plan)

    assert outcome_ids(result) == {unused}
    assert tags_of(engine, used) == {"used:1", "used:2", "other-repo/used:1"}
    assert inspect_container(engine, container)["State"]["Status"] == state


def test_rule_1_an_image_whose_only_container_goes_in_the_same_plan_goes_after_it(clean_engine):
    engine = clean_engine
    image_id = _runnable(engine, ["done:1", "done:2"])
    container = run_container(engine, image_id, state="exited")

    data = cli_prune(engine, "--max-age=-1s", "--keep-recent", "0")

    assert json_object(data, container)["result"] == "deleted"
    assert json_object(data, image_id)["result"] == "deleted"
    order = [o["id"] for o in data["objects"] if o["decision"] == "delete"]
    assert order.index(container) < order.index(image_id)
    assert tags_of(engine, image_id) is None


@pytest.mark.parametrize("why_the_child_stays", ["container", "exclusion"])
def test_rule_1_a_base_image_whose_classic_built_child_stays_keeps_its_tag(clean_engine, why_the_child_stays):
    """The classic builder links child to base through intermediate images that /system/df
    does not list; the base must still be seen as the parent of a child that stays."""
    engine = clean_engine
    base = build(engine, BUSYBOX_BASE, "base:1", buildkit=False)
    child = build(engine, "FROM base:1\nRUN echo one > /one\nRUN echo two > /two\n", "child:1", buildkit=False)
    if why_the_child_stays == "container":
        run_container(engine, child, state="exited")

    the_plan = make_plan(engine, policy(**OLD, containers=False,
                                        exclude=("child:*",) if why_the_child_stays == "exclusion" else ()))
    assert obj(the_plan, child).decision is Decision.KEEP
    assert obj(the_plan, base).decision is Decision.KEEP, obj(the_plan, base).reason
    result = execute(engine, the_plan)

    assert obj(the_plan, base).reason == "parent of image child:1, which stays"
    assert tags_of(engine, base) == {"base:1"}
    assert tags_of(engine, child) == {"child:1"}
    assert not result.failures and {r.outcome for r in result.results} <= {Outcome.DELETED}


# -- rule 2 ---------------------------------------------------------------------------------


def test_rule_2_a_whole_run_sends_no_forced_delete(clean_engine):
    engine = clean_engine
    multi = import_image(engine, MB, ["multi:1", "multi:2", "elsewhere/multi:1"])
    runnable = _runnable(engine, "box:1")
    stopped = run_container(engine, runnable, state="exited")
    build(engine, BUSYBOX_BASE + "RUN echo cache > /cache\n", "built:1")
    with closing(engine.client()) as client:
        client.volumes.create("old-volume")
    adapter = sj(engine)
    spy = _DeleteSpy(adapter)

    the_plan = make_plan(engine, policy(**OLD, volumes="all"), adapter=adapter,
                         now=utcnow() + timedelta(days=1))
    result = execute(engine, the_plan, adapter=adapter)

    assert {multi, runnable, stopped, "old-volume"} <= outcome_ids(result)
    assert result.count(Kind.BUILD_CACHE) > 0
    assert len(spy.deletes()) >= 5
    assert spy.forced() == []


def test_rule_2_an_image_of_a_stopped_container_is_refused_by_the_engine_not_forced_away(clean_engine):
    """The re-check is blinded, as if the container appeared in the instant after it (a
    single-tag image is not even asked about: its deletion by ID is the engine's own atomic
    check): only the absence of `force` keeps the image, because the engine deletes it when
    forced."""
    engine = clean_engine
    image_id = _runnable(engine, "late:1")
    the_plan = make_plan(engine, policy(**OLD))
    assert obj(the_plan, image_id).decision is Decision.DELETE
    container = run_container(engine, image_id, state="exited")
    adapter = sj(engine)
    adapter.containers_of_image = lambda _image_id: []

    result = execute(engine, the_plan, adapter=adapter)

    outcome = result_of(result, image_id)
    assert outcome.outcome is Outcome.KEPT, outcome
    assert "engine refused" in outcome.detail and "must be forced" in outcome.detail
    assert container[:12] in outcome.detail, "the engine's reason names the container"
    assert tags_of(engine, image_id) == {"late:1"}
    assert inspect_container(engine, container)["Image"] == image_id


def test_rule_2_an_image_with_a_tag_outside_the_repo_scope_stays_whole(clean_engine):
    engine = clean_engine
    both = import_image(engine, MB, ["app:1", "vendor/tool:1"])
    only_app = import_image(engine, MB, "app:2")

    data = cli_prune(engine, "--max-age=-1s", "--keep-recent", "0", "--repo", "app")

    assert json_object(data, only_app)["result"] == "deleted"
    assert json_object(data, both)["decision"] == "keep", json_object(data, both)
    assert tags_of(engine, both) == {"app:1", "vendor/tool:1"}


# -- rule 3 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["registry.local:5000/app:*", "*:stable", "app:1"])
def test_rule_3_an_exclusion_matching_any_one_tag_protects_the_whole_image(clean_engine, pattern):
    engine = clean_engine
    image_id = import_image(engine, MB, ["app:1", "app:2", "registry.local:5000/app:stable"])
    other = import_image(engine, MB, "app:3")
    start = utcnow()

    the_plan = make_plan(engine, policy(**OLD, exclude=(pattern,)))
    assert obj(the_plan, image_id).decision is Decision.KEEP
    assert obj(the_plan, image_id).reason.startswith("excluded: ")
    result = execute(engine, the_plan)

    assert outcome_ids(result) == {other}
    assert tags_of(engine, image_id) == {"app:1", "app:2", "registry.local:5000/app:stable"}
    assert not [e for e in image_events(engine, start, utcnow() + timedelta(seconds=1)) if e.get("id") == image_id]


# -- rule 4 ---------------------------------------------------------------------------------


def test_rule_4_a_label_scope_leaves_every_object_outside_it_untouched(clean_engine):
    engine = clean_engine
    mine, theirs = {"project": "p1"}, {"project": "p2"}
    my_image = load_image(engine, [busybox_layer()], "p1-app:1", labels=mine)
    their_image = load_image(engine, [busybox_layer()], "p2-app:1", labels=theirs)
    unlabelled = import_image(engine, MB, "plain:1")
    my_container = run_container(engine, my_image, state="exited", labels=mine)
    their_container = run_container(engine, their_image, state="exited", labels=theirs)
    with closing(engine.client()) as client:
        client.volumes.create("p1-data", labels=mine)
        client.volumes.create("p2-data", labels=theirs)
    before = inventory(engine)

    data = cli_prune(engine, "--label", "project=p1", "--max-age=-1s", "--keep-recent", "0",
                     "--volumes=all")

    assert json_ids(data, result="deleted") == {my_image, my_container, "p1-data"}
    after = inventory(engine)
    gone = {kind: before[kind] - after[kind] for kind in before}
    assert gone == {"image": {my_image}, "container": {my_container}, "build-cache": set(),
                    "volume": {"p1-data"}}
    assert tags_of(engine, their_image) == {"p2-app:1"} and tags_of(engine, unlabelled) == {"plain:1"}
    assert their_container in after["container"] and "p2-data" in after["volume"]


@pytest.mark.parametrize("p1_text", ["project-one", "p1"], ids=["sizes-differ", "same-size-layers"])
def test_rule_4_build_cache_is_scoped_by_record_never_by_the_label_filter_the_engine_ignores(clean_engine, p1_text):
    """With "p1" both projects' last layers have the same size on the same parent, so the
    API cannot tell which record holds which: p2's record must still never go."""
    engine = clean_engine
    p1 = build(engine, BUSYBOX_BASE + f"RUN echo {p1_text} > /project\n", "p1-app:1", labels={"project": "p1"})
    p2 = build(engine, BUSYBOX_BASE + "RUN echo p2 > /project\n", "p2-app:1", labels={"project": "p2"})
    # BuildKit describes each record by its step: that names the project, independently of
    # how sparkjoy attributes records to images.
    records = build_cache(engine)
    [p1_record] = [r["ID"] for r in records if f"echo {p1_text} " in (r.get("Description") or "")]
    [p2_record] = [r["ID"] for r in records if "echo p2 " in (r.get("Description") or "")]
    as_of = utcnow() + timedelta(days=1)

    data = cli_prune(engine, "--label", "project=p1", "--max-age=-1s", "--keep-recent", "0", as_of=as_of)

    assert json_object(data, p1)["result"] == "deleted"
    assert tags_of(engine, p2) == {"p2-app:1"}
    assert json_object(data, p2_record)["decision"] == "keep", json_object(data, p2_record)
    assert json_object(data, p2_record)["reason"].startswith("out of scope")
    remaining = {r["ID"] for r in build_cache(engine)}
    assert p2_record in remaining
    if p1_text == "project-one":
        # Attributable to p1's image alone: in scope, old, deleted.
        assert json_object(data, p1_record)["result"] == "deleted", json_object(data, p1_record)
        assert p1_record not in remaining
    else:
        # It may hold p1's layer or p2's: so it may hold a layer of an image outside the scope,
        # and stays (never guessed).
        assert json_object(data, p1_record)["decision"] == "keep"
        assert json_object(data, p1_record)["reason"] == "out of scope: holds layers of images outside the scope"
        assert p1_record in remaining
    # Records of steps both projects share (busybox, the contexts) are not p1's alone: kept.
    for record in records:
        if record["ID"] != p1_record:
            assert record["ID"] in remaining, record

    # Why by record: the engine's build-cache prune ignores the label filter, taking p2's cache.
    with closing(engine.client()) as client:
        pruned = client.api.prune_builds(filters={"label": ["project=p1"]}, all=True)
    assert p2_record in (pruned.get("CachesDeleted") or [])


def test_rule_4_a_scoped_prune_that_kept_the_cache_leaves_it_attributable_to_the_scope(clean_engine):
    """A scoped prune with --no-build-cache deletes p1's image; its cache record then holds the
    layer of no image there. The next scoped prune must still know it is p1's (and p2's still
    not), or p1's cache could never be pruned under the scope again."""
    engine = clean_engine
    p1 = build(engine, BUSYBOX_BASE + "RUN echo project-one > /project\n", "p1-app:1", labels={"project": "p1"})
    p2 = build(engine, BUSYBOX_BASE + "RUN echo p2 > /project\n", "p2-app:1", labels={"project": "p2"})
    records = build_cache(engine)
    [p1_record] = [r["ID"] for r in records if "echo project-one " in (r.get("Description") or "")]
    [p2_record] = [r["ID"] for r in records if "echo p2 " in (r.get("Description") or "")]
    scope = ("--label", "project=p1", "--max-age=-1s", "--keep-recent", "0")

    first = cli_prune(engine, *scope, "--no-build-cache", as_of=utcnow() + timedelta(days=1))
    assert json_object(first, p1)["result"] == "deleted"
    assert p1_record in {r["ID"] for r in build_cache(engine)}

    second = cli_prune(engine, *scope, as_of=utcnow() + timedelta(days=1))
    assert json_object(second, p1_record)["result"] == "deleted", json_object(second, p1_record)
    assert json_object(second, p2_record)["decision"] == "keep"
    remaining = {r["ID"] for r in build_cache(engine)}
    assert p1_record not in remaining and p2_record in remaining
    assert tags_of(engine, p2) == {"p2-app:1"}
    for record in records:
        if record["ID"] != p1_record:
            assert record["ID"] in remaining, record


# -- rule 5 ---------------------------------------------------------------------------------


def test_rule_5_records_a_build_starts_using_after_the_plan_are_refused_by_the_engine_and_the_build_succeeds(
        clean_engine):
    engine = clean_engine
    build(engine, BUSYBOX_BASE + "RUN echo first > /first\n", "first:1")
    the_plan = make_plan(engine, policy(max_age=EVERYTHING_OLD, keep_recent=0, images=False),
                         now=utcnow() + timedelta(days=1))
    planned_records = {o.id for o in the_plan.deletions if o.kind is Kind.BUILD_CACHE}
    assert planned_records

    gate = StepGate()
    with start_build(engine, BUSYBOX_BASE + gate.run_step() + "RUN echo second > /second\n", "second:1") as running:
        now_in_use = wait_until(
            lambda: gate.waiting()
            and planned_records & {r["ID"] for r in build_cache(engine) if r.get("InUse")},
            timeout=60, what="the build's RUN step to use records the plan wants to delete")
        result = execute(engine, the_plan)
        assert running.running, "the build finished before the run: the test proves nothing"
        for record_id in now_in_use:
            outcome = result_of(result, record_id)
            assert outcome.outcome is Outcome.KEPT, outcome
            assert "in use by a build" in outcome.detail
        assert now_in_use <= {r["ID"] for r in build_cache(engine)}
        gate.open()
        image_id = running.wait(timeout=120)
    assert tags_of(engine, image_id) == {"second:1"}


def test_rule_5_a_plan_made_during_a_build_never_targets_its_records(clean_engine):
    engine = clean_engine
    gate = StepGate()
    with start_build(engine, BUSYBOX_BASE + gate.run_step() + "RUN echo x > /x\n", "x:1") as running:
        wait_until(lambda: gate.waiting()
                   and {r["ID"] for r in build_cache(engine) if r.get("InUse")},
                   timeout=60, what="the build's RUN step to run with its cache records in use")
        the_plan = make_plan(engine, policy(**OLD), now=utcnow() + timedelta(days=1))
        in_use = {r.id for r in the_plan.snapshot.build_cache if r.in_use}
        assert in_use, "no record in use when the snapshot was taken: the test proves nothing"
        for record_id in in_use:
            assert obj(the_plan, record_id).decision is Decision.KEEP
            assert obj(the_plan, record_id).reason == "in use by a running build"
        execute(engine, the_plan)
        assert running.running, "the build finished before the run: the test proves nothing"
        assert in_use <= {r["ID"] for r in build_cache(engine)}
        gate.open()
        running.wait(timeout=120)


# -- rule 6 ---------------------------------------------------------------------------------


def test_rule_6_an_image_that_a_new_container_uses_after_the_plan_is_kept_with_the_reason(clean_engine):
    engine = clean_engine
    target = _runnable(engine, ["target:1", "target:2"])
    bystander = import_image(engine, MB, "bystander:1")
    the_plan = make_plan(engine, policy(**OLD))
    assert {target, bystander} <= {o.id for o in the_plan.deletions}
    newcomer = run_container(engine, target, state="created")

    result = execute(engine, the_plan)

    outcome = result_of(result, target)
    assert outcome.outcome is Outcome.KEPT
    assert outcome.detail.startswith("changed since the plan: now used by container")
    assert result_of(result, bystander).outcome is Outcome.DELETED
    assert tags_of(engine, target) == {"target:1", "target:2"}
    assert inspect_container(engine, newcomer)["State"]["Status"] == "created"


def test_rule_6_an_image_a_tag_moved_onto_after_the_plan_is_kept_with_the_reason(clean_engine):
    engine = clean_engine
    old = import_image(engine, MB, "app:1")
    current = import_image(engine, MB, "app:latest")
    the_plan = make_plan(engine, policy(**OLD, exclude=("app:latest",)))
    assert obj(the_plan, old).decision is Decision.DELETE
    tag(engine, old, "app:latest")  # a rollback moves app:latest onto the old image

    result = execute(engine, the_plan)

    outcome = result_of(result, old)
    assert outcome.outcome is Outcome.KEPT
    assert outcome.detail == "changed since the plan: now also tagged app:latest"
    assert tags_of(engine, old) == {"app:1", "app:latest"}
    assert tags_of(engine, current) == set()


def test_rule_6_a_dangling_image_that_a_new_container_uses_after_the_plan_is_kept_by_the_engines_refusal(
    clean_engine,
):
    """A dangling image is deleted by ID without asking for its containers first: the engine's
    own refusal (never forced) keeps it, and the report says the engine refused."""
    engine = clean_engine
    target = _runnable(engine, "dangle/x:1")
    import_image(engine, MB, "dangle/x:1")  # the tag moves on: target dangles, with a last-tag time
    the_plan = make_plan(engine, policy(**OLD))
    assert obj(the_plan, target).decision is Decision.DELETE and obj(the_plan, target).names == ()
    newcomer = run_container(engine, target, state="created")

    outcome = result_of(execute(engine, the_plan), target)

    assert outcome.outcome is Outcome.KEPT, outcome
    assert outcome.detail.startswith("engine refused") and "container" in outcome.detail, outcome.detail
    assert target in inventory(engine)[Kind.IMAGE.value]
    assert inspect_container(engine, newcomer)["State"]["Status"] == "created"


def test_rule_6_a_tag_moved_off_a_planned_image_stays_on_its_new_image(clean_engine):
    engine = clean_engine
    old = import_image(engine, MB, "app:1")
    the_plan = make_plan(engine, policy(**OLD))
    assert obj(the_plan, old).decision is Decision.DELETE
    newer = import_image(engine, MB, "app:1")  # a rebuild takes the tag

    result = execute(engine, the_plan)

    assert result_of(result, old).outcome in (Outcome.DELETED, Outcome.KEPT)
    assert tags_of(engine, newer) == {"app:1"}


def test_rule_6_a_container_started_or_removed_after_the_plan_is_reported_and_the_run_goes_on(clean_engine):
    engine = clean_engine
    image_id = _runnable(engine, "svc:1")
    restarted = run_container(engine, image_id, state="running")  # a service, stopped for now
    with closing(engine.client()) as client:
        client.api.kill(restarted)
        client.api.wait(restarted, timeout=60)
    vanished = run_container(engine, image_id, state="exited")
    gone_image = import_image(engine, MB, "gone:1")
    last = import_image(engine, MB, "zz-last:1")
    the_plan = make_plan(engine, policy(**OLD))
    assert {restarted, vanished, gone_image, last} <= {o.id for o in the_plan.deletions}
    with closing(engine.client()) as client:
        client.api.start(restarted)
        client.api.remove_container(vanished)
    remove_image_by_hand(engine, "gone:1")

    result = execute(engine, the_plan)

    assert result_of(result, restarted).outcome is Outcome.KEPT
    assert result_of(result, restarted).detail == "changed since the plan: now running"
    assert result_of(result, vanished).outcome is Outcome.GONE
    assert result_of(result, gone_image).outcome is Outcome.GONE
    assert result_of(result, image_id).outcome is Outcome.KEPT  # its container runs again
    assert result_of(result, last).outcome is Outcome.DELETED
    assert tags_of(engine, image_id) == {"svc:1"}
    assert not result.failures


# -- rule 7 ---------------------------------------------------------------------------------


def test_rule_7_with_nothing_changed_the_deleted_objects_are_exactly_the_dry_run_list(clean_engine):
    engine = clean_engine
    # A realistic mess: rebuilt tags, a shared base, several tags, containers in every
    # state, classic and BuildKit builds with their cache, volumes.
    runnable = _runnable(engine, ["web:1", "web:2", "mirror/web:1"])
    run_container(engine, runnable, state="running")
    stopped_image = _runnable(engine, "job:1")
    run_container(engine, stopped_image, state="exited")
    run_container(engine, stopped_image, state="created")
    for _ in range(3):
        import_image(engine, MB, "app:latest", labels={"project": "p1"})
    import_image(engine, MB, ["lib:1", "lib:2"])
    build(engine, BUSYBOX_BASE + "RUN echo kit > /kit\n", "kit:1")
    build(engine, BUSYBOX_BASE + "RUN echo classic > /classic\n", "classic:1", buildkit=False)
    with closing(engine.client()) as client:
        client.volumes.create("named")
        client.api.create_container(runnable, command=["/bin/busybox", "true"],
                                    host_config=client.api.create_host_config(binds={"vol-in-use": {"bind": "/v"}}))
    as_of = utcnow() + timedelta(days=1)
    args = ("--max-age", "6h", "--keep-recent", "1", "--volumes=all")
    before = inventory(engine)

    dry = cli_prune(engine, *args, as_of=as_of, dry_run=True)
    real = cli_prune(engine, *args, as_of=as_of)

    planned = {(o["kind"], o["id"]) for o in dry["objects"] if o["decision"] == "delete"}
    assert planned, "the fixture must give the prune something to do"
    assert {(o["kind"], o["id"]) for o in real["objects"] if o["decision"] == "delete"} == planned
    assert {(o["kind"], o["id"]) for o in real["objects"] if o.get("result") == "deleted"} == planned
    after = inventory(engine)
    gone = {(kind, object_id) for kind in before for object_id in before[kind] - after[kind]}
    assert gone == planned
    assert len({kind for kind, _ in planned}) == 4  # every kind took part
