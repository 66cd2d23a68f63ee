"""Issue 2, "Cases from the field that must pass" (a-i), each on the real private engine.

Ages: images loaded here get their last tag time when the test tags them (now); "old" is
reached by planning as of a later time (the planner's `now`, the CLI's `--as-of`), never
by sleeping. Every real prune runs with the audit on and asserts it is clean.
"""

from __future__ import annotations

import os
from contextlib import closing
from datetime import timedelta

import docker.errors
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
    make_layer,
    run_container,
    start_build,
    wait_until,
)
from tests.integration.support import (
    EVERYTHING_OLD,
    build_cache,
    cli,
    cli_prune,
    execute,
    image_events,
    inspect_container,
    inspect_image,
    iso,
    json_ids,
    json_object,
    make_plan,
    obj,
    outcome_ids,
    parse_engine_time,
    policy,
    remove_image_by_hand,
    sj,
    tag,
    tags_of,
    utcnow,
)

MB = 1_000_000


# -- a --------------------------------------------------------------------------------------


def test_a_an_image_built_long_ago_and_tagged_again_a_minute_ago_is_kept_under_a_24h_max_age(clean_engine):
    engine = clean_engine
    built = utcnow() - timedelta(days=30)
    # Loaded with its tag in the archive (no last tag time, like `docker load`), then
    # tagged again through the API, as a cache-hit rebuild does.
    image_id = import_image(engine, MB, "app:1", created=built, tag_on_load=True)
    tag(engine, image_id, "app:1")
    inspected = inspect_image(engine, image_id)
    created = parse_engine_time(inspected["Created"])
    last_tag = parse_engine_time(inspected["Metadata"]["LastTagTime"])
    a_minute_later = last_tag + timedelta(minutes=1)
    # docker's `until=24h` compares Created, which is 30 days old.
    assert a_minute_later - created > timedelta(hours=24)

    the_plan = make_plan(engine, policy(max_age=timedelta(hours=24), keep_recent=0), now=a_minute_later)
    planned = obj(the_plan, image_id)
    assert planned.decision is Decision.KEEP
    assert planned.reason.startswith("recent: last tagged 1m"), planned.reason
    assert planned.reference_time == last_tag

    # The same image judged 25 h after its tag goes: the keep above is the age rule at work.
    later = make_plan(engine, policy(max_age=timedelta(hours=24), keep_recent=0),
                      now=last_tag + timedelta(hours=25))
    assert obj(later, image_id).decision is Decision.DELETE

    # A real run through the command line, a minute after the tag: the image stays.
    data = cli_prune(engine, "--max-age", "24h", "--keep-recent", "0", as_of=a_minute_later)
    assert json_object(data, image_id)["result"] == "kept"
    assert tags_of(engine, image_id) == {"app:1"}

    # The engine's own prune with `until=24h` deletes it: that is the trap sparkjoy avoids.
    with closing(engine.client()) as client:
        pruned = client.api.prune_images(filters={"until": "24h", "dangling": False})
    assert any(entry.get("Deleted") == image_id for entry in pruned["ImagesDeleted"] or [])
    assert tags_of(engine, image_id) is None


# -- b --------------------------------------------------------------------------------------


def test_b_under_a_label_scope_old_labelled_tagged_and_dangling_images_go_and_the_dry_run_set_is_the_deleted_set(
        clean_engine):
    engine = clean_engine
    mine = {"com.example.project": "demo"}
    first = import_image(engine, MB, "app:1", labels=mine)
    second = import_image(engine, MB, "app:2", labels=mine)
    replaced = import_image(engine, MB, "app:3", labels=mine)
    rebuilt = import_image(engine, MB, "app:3", labels=mine)  # the tag moves to the rebuild
    foreign = import_image(engine, MB, "other:1")  # no label: outside the scope
    assert tags_of(engine, replaced) == set()  # dangling now
    last_tag = max(parse_engine_time(inspect_image(engine, i)["Metadata"]["LastTagTime"])
                   for i in (first, second, replaced, rebuilt, foreign))
    as_of = last_tag + timedelta(hours=7)  # older than the default 6 h max age

    dry = cli_prune(engine, "--label", "com.example.project=demo", as_of=as_of, dry_run=True)
    planned = json_ids(dry, decision="delete")
    # Default keep-recent 2: app:3 and app:2 are the two newest of repository app.
    assert planned == {first, replaced}
    assert json_object(dry, foreign)["reason"].startswith("out of scope")
    assert json_object(dry, rebuilt)["reason"].startswith("kept recent: #1")
    assert json_object(dry, second)["reason"].startswith("kept recent: #2")

    real = cli_prune(engine, "--label", "com.example.project=demo", as_of=as_of)
    assert json_ids(real, result="deleted") == planned
    assert tags_of(engine, first) is None and tags_of(engine, replaced) is None
    assert tags_of(engine, foreign) == {"other:1"}
    assert tags_of(engine, second) == {"app:2"} and tags_of(engine, rebuilt) == {"app:3"}


# -- c --------------------------------------------------------------------------------------


def test_c_an_image_with_three_tags_in_two_repositories_used_by_a_running_container_keeps_every_tag(clean_engine):
    engine = clean_engine
    tags = {"web:1", "web:stable", "mirror/web:1"}
    used = load_image(engine, [busybox_layer()], sorted(tags))
    run_container(engine, used, state="running")
    unused = import_image(engine, MB, "junk:1")  # so the run really deletes something
    start = utcnow()

    the_plan = make_plan(engine, policy(max_age=EVERYTHING_OLD, keep_recent=0))
    assert obj(the_plan, used).decision is Decision.KEEP
    assert obj(the_plan, used).reason.startswith("in use by container")
    result = execute(engine, the_plan)
    assert result.count(Kind.IMAGE) == 1 and tags_of(engine, unused) is None

    data = cli_prune(engine, "--max-age=-1s", "--keep-recent", "0")
    assert json_object(data, used)["decision"] == "keep"
    assert not any(o.get("removed_tags") for o in data["objects"] if o["id"] == used)

    assert tags_of(engine, used) == tags
    events = image_events(engine, start, utcnow() + timedelta(seconds=1))
    assert [e for e in events if e.get("Action") in ("untag", "delete") and e.get("id") == used] == []
    # The events are real: the unused image's removal was logged.
    assert any(e.get("id") == unused and e.get("Action") == "delete" for e in events)


# -- d --------------------------------------------------------------------------------------


def test_d_an_old_image_with_two_tags_in_one_repository_is_untagged_tag_by_tag_then_deleted_never_forced(
        clean_engine):
    engine = clean_engine
    twice = import_image(engine, MB, ["app:1", "app:latest"])
    # The engine refuses to delete it by ID without force: one delete call cannot do it.
    with closing(engine.client()) as client:
        with pytest.raises(docker.errors.APIError) as refused:
            client.api.remove_image(twice, force=False)
    assert refused.value.status_code == 409 and "must be forced" in str(refused.value)
    # An image of a stopped container: force would delete it, so it tells a forced run apart.
    pinned = load_image(engine, [busybox_layer()], "pinned:1")
    run_container(engine, pinned, state="exited")
    start = utcnow()

    data = cli_prune(engine, "--max-age=-1s", "--keep-recent", "0", "--no-containers")

    entry = json_object(data, twice)
    assert entry["result"] == "deleted"
    assert sorted(entry["removed_tags"]) == ["app:1", "app:latest"]
    assert tags_of(engine, twice) is None
    assert tags_of(engine, pinned) == {"pinned:1"}
    actions = [e["Action"] for e in image_events(engine, start, utcnow() + timedelta(seconds=1))
               if e.get("id") == twice]
    assert actions == ["untag", "untag", "delete"]


def test_d_variant_an_exclusion_matching_one_of_two_tags_keeps_the_whole_image(clean_engine):
    engine = clean_engine
    twice = import_image(engine, MB, ["app:1", "app:latest"])
    other = import_image(engine, MB, "scratchpad:1")
    start = utcnow()

    data = cli_prune(engine, "--max-age=-1s", "--keep-recent", "0", "--exclude", "app:lat*")

    entry = json_object(data, twice)
    assert entry["decision"] == "keep"
    assert entry["reason"] == "excluded: app:latest matches --exclude app:lat*"
    assert json_object(data, other)["result"] == "deleted"
    assert tags_of(engine, twice) == {"app:1", "app:latest"}
    events = image_events(engine, start, utcnow() + timedelta(seconds=1))
    assert [e for e in events if e.get("id") == twice] == []


# -- e --------------------------------------------------------------------------------------


def test_e_images_of_a_never_started_and_of_an_exited_container_keep_their_tags_with_container_pruning_off(
        clean_engine):
    engine = clean_engine
    of_created = load_image(engine, [busybox_layer()], ["created-only:1", "created-only:2"])
    of_exited = load_image(engine, [busybox_layer()], "exited-only:1")
    never_started = run_container(engine, of_created, state="created")
    exited = run_container(engine, of_exited, state="exited")

    the_plan = make_plan(engine, policy(max_age=EVERYTHING_OLD, keep_recent=0, containers=False))
    for image_id in (of_created, of_exited):
        assert obj(the_plan, image_id).decision is Decision.KEEP
        assert obj(the_plan, image_id).reason.startswith("in use by container")
    assert obj(the_plan, never_started).reason == "container pruning is off"
    execute(engine, the_plan)
    data = cli_prune(engine, "--max-age=-1s", "--keep-recent", "0", "--no-containers")
    assert json_ids(data, decision="delete") == set()

    assert tags_of(engine, of_created) == {"created-only:1", "created-only:2"}
    assert tags_of(engine, of_exited) == {"exited-only:1"}
    assert inspect_container(engine, never_started)["State"]["Status"] == "created"
    assert inspect_container(engine, exited)["State"]["Status"] == "exited"


def test_e_a_never_started_container_ages_from_creation_an_exited_one_from_its_finish(clean_engine):
    engine = clean_engine
    image_id = load_image(engine, [busybox_layer()], "box:1")
    never_started = run_container(engine, image_id, state="created")
    exited = run_container(engine, image_id, state="exited")
    state = inspect_container(engine, never_started)
    assert state["State"]["FinishedAt"].startswith("0001-01-01")  # the engine's zero time
    created_at = parse_engine_time(state["Created"])
    done = inspect_container(engine, exited)
    exited_created = parse_engine_time(done["Created"])
    finished_at = parse_engine_time(done["State"]["FinishedAt"])
    assert finished_at - exited_created > timedelta(milliseconds=1)
    hour = timedelta(hours=1)
    just = timedelta(microseconds=1)

    def decide(now):
        the_plan = make_plan(engine, policy(max_age=hour, images=False), now=now)
        return obj(the_plan, never_started), obj(the_plan, exited)

    # The engine lists a container's creation in whole seconds (/system/df `Created`).
    second = timedelta(seconds=1)
    # Under an hour after creation: the zero finish time does not make it "old".
    created_one, _ = decide(created_at + hour - 2 * second)
    assert created_one.decision is Decision.KEEP
    assert created_one.reference_time == created_at.replace(microsecond=0)
    assert created_one.reason.startswith("recent: created (never started)")
    created_one, _ = decide(created_at + hour + second)
    assert created_one.decision is Decision.DELETE

    # Just under an hour after it finished (but over an hour after it was created): recent.
    _, exited_one = decide(finished_at + hour - just)
    assert exited_one.decision is Decision.KEEP and exited_one.reference_time == finished_at
    assert exited_one.reason.startswith("recent: exited, finished")
    _, exited_one = decide(finished_at + hour + just)
    assert exited_one.decision is Decision.DELETE


def test_e_an_image_with_a_zero_last_tag_time_is_never_old(clean_engine):
    engine = clean_engine
    # Loaded with its tag in the archive: LastTagTime is the zero time, Created is ancient.
    image_id = import_image(engine, MB, "loaded:1", created=utcnow() - timedelta(days=3650), tag_on_load=True)
    last_tag = inspect_image(engine, image_id)["Metadata"].get("LastTagTime")
    assert last_tag in (None, "", "0001-01-01T00:00:00Z")

    far_future = utcnow() + timedelta(days=3650)
    the_plan = make_plan(engine, policy(keep_recent=0), now=far_future)
    assert obj(the_plan, image_id).decision is Decision.KEEP
    assert obj(the_plan, image_id).reason.startswith("age unknown")
    data = cli_prune(engine, "--keep-recent", "0", as_of=far_future)
    assert json_object(data, image_id)["result"] == "kept"
    assert tags_of(engine, image_id) == {"loaded:1"}


# -- i --------------------------------------------------------------------------------------


def test_i_scope_project_p1_with_exclusion_redis_deletes_only_p1s_old_images(clean_engine):
    engine = clean_engine
    p1, p2 = {"project": "p1"}, {"project": "p2"}
    p1_old = [import_image(engine, MB, "p1-app:1", labels=p1),
              import_image(engine, MB, "p1-app:2", labels=p1),
              import_image(engine, MB, "p1-db:1", labels=p1)]
    p1_dangling = import_image(engine, MB, "p1-app:3", labels=p1)
    import_image(engine, MB, "p1-app:3", labels=p1)  # moves p1-app:3 off p1_dangling
    p1_excluded = import_image(engine, MB, ["p1-cache:1", "redis:7-alpine"], labels=p1)
    p2_images = [import_image(engine, MB, "p2-app:1", labels=p2), import_image(engine, MB, "p2-app:2", labels=p2)]
    unlabelled = import_image(engine, MB, ["cache:1", "redis:7"])
    p1_recent = import_image(engine, MB, "p1-web:1", labels=p1)  # tagged last
    p1_rebuilt = [i for i in _ids_with_tag(engine, "p1-app:3")]
    recent_tag = parse_engine_time(inspect_image(engine, p1_recent)["Metadata"]["LastTagTime"])
    # Everything tagged before p1_recent is older than 6 h as of this time; p1_recent is not.
    as_of = recent_tag + timedelta(hours=6) - timedelta(microseconds=1)
    expected = set(p1_old) | {p1_dangling} | set(p1_rebuilt)
    before = {i: tags_of(engine, i) for i in [p1_excluded, *p2_images, unlabelled, p1_recent]}

    args = ("--label", "project=p1", "--exclude", "redis:*", "--keep-recent", "0")
    dry = cli_prune(engine, *args, as_of=as_of, dry_run=True)
    assert json_ids(dry, decision="delete") == expected
    assert json_object(dry, p1_excluded)["reason"] == "excluded: redis:7-alpine matches --exclude redis:*"
    assert json_object(dry, unlabelled)["reason"].startswith("out of scope")
    assert json_object(dry, p1_recent)["reason"].startswith("recent")

    real = cli_prune(engine, *args, as_of=as_of)
    assert json_ids(real, result="deleted") == expected
    for image_id in expected:
        assert tags_of(engine, image_id) is None
    for image_id, tags in before.items():
        assert tags_of(engine, image_id) == tags


def _ids_with_tag(engine, name: str) -> list[str]:
    with closing(engine.client()) as client:
        return [client.api.inspect_image(name)["Id"]]


# -- f --------------------------------------------------------------------------------------


def _disk_total(engine) -> int:
    stats = os.statvfs(engine.data_root)
    return stats.f_blocks * stats.f_frsize


def _family(engine, container_state: str) -> dict[str, str]:
    """A 50 MB base, a child adding only a label, a child adding a 1 MB file, a container of the latter."""
    base_layers = [busybox_layer(), make_layer(50 * MB)]
    ids = {
        "base": load_image(engine, base_layers, "base:1"),
        "label-child": load_image(engine, base_layers, "label-child:1", labels={"only": "a label"}),
        "file-child": load_image(engine, [*base_layers, make_layer(MB)], "file-child:1"),
    }
    ids["container"] = run_container(engine, ids["file-child"], state=container_state)
    return ids


@pytest.mark.parametrize(
    ("container_state", "exclude", "deleted"),
    [
        ("running", ("base:*",), {"label-child"}),
        ("running", ("label-child:*",), {"base"}),
        ("running", (), {"base", "label-child"}),
        ("exited", ("base:*", "label-child:*"), {"container", "file-child"}),
        ("exited", ("base:*",), {"container", "file-child", "label-child"}),
        ("exited", (), {"container", "file-child", "label-child", "base"}),
    ],
    ids=lambda value: value if isinstance(value, str) else "-".join(sorted(value)) or "none",
)
def test_f_for_any_subset_of_a_shared_base_family_the_predicted_bytes_are_the_measured_bytes(
        clean_engine, container_state, exclude, deleted):
    engine = clean_engine
    ids = _family(engine, container_state)
    pol = policy(max_age=EVERYTHING_OLD, keep_recent=0, exclude=exclude)

    the_plan = make_plan(engine, pol)
    assert {o.id for o in the_plan.deletions} == {ids[name] for name in deleted}
    usage_before = sj(engine).usage()
    for planned in the_plan.objects:
        assert 0 <= planned.bytes <= usage_before, planned
    assert 0 <= the_plan.predicted_bytes <= usage_before <= _disk_total(engine)
    if "file-child" not in deleted:
        # The label child shares every layer: deleting it (and the base) frees nothing.
        assert the_plan.predicted_bytes == 0
        assert obj(the_plan, ids["label-child"]).bytes == 0
    result = execute(engine, the_plan)

    assert outcome_ids(result) == {ids[name] for name in deleted}
    assert 0 <= result.reclaimed_bytes <= usage_before
    assert result.reclaimed_bytes == pytest.approx(the_plan.predicted_bytes, abs=MB // 100)


def test_f_deleting_the_child_that_adds_only_a_label_frees_zero_bytes_through_the_cli(clean_engine):
    engine = clean_engine
    ids = _family(engine, "running")

    dry = cli_prune(engine, "--max-age=-1s", "--keep-recent", "0", "--exclude", "base:*", dry_run=True)
    assert json_ids(dry, decision="delete") == {ids["label-child"]}
    assert json_object(dry, ids["label-child"])["bytes"] == 0
    assert dry["predicted_bytes"] == 0

    # sparkjoy df: no figure negative, none above what the engine uses or the disk holds.
    df = cli(engine, "df", "--max-age=-1s", "--keep-recent", "0")
    assert 0 < df["total_bytes"] <= _disk_total(engine)
    for row in df["summary"]:
        for key in ("bytes", "reclaimable_bytes", "held_by_cache_bytes"):
            assert 0 <= row[key] <= df["total_bytes"], row
    for entry in df["objects"]:
        assert 0 <= entry["bytes"] <= df["total_bytes"] and 0 <= entry["unique_bytes"] <= df["total_bytes"]
    [label_child] = [o for o in df["objects"] if o["id"] == ids["label-child"]]
    assert label_child["unique_bytes"] == 0

    real = cli_prune(engine, "--max-age=-1s", "--keep-recent", "0", "--exclude", "base:*")
    assert json_ids(real, result="deleted") == {ids["label-child"]}
    assert real["reclaimed_bytes"] == 0
    assert all(o["bytes"] >= 0 for o in real["objects"])


# -- g --------------------------------------------------------------------------------------


def test_g_a_buildkit_image_deleted_by_hand_frees_about_nothing_and_its_50_mb_wait_in_build_cache(clean_engine):
    engine = clean_engine
    image_id = build(engine, "FROM scratch\nCOPY big.bin /big.bin\n", "big:1",
                     files={"big.bin": os.urandom(50 * MB)})

    # What deleting the image alone would do: about nothing now, 50 MB held by the cache.
    dry = cli_prune(engine, "--max-age=-1s", "--keep-recent", "0", "--no-build-cache", dry_run=True)
    planned = json_object(dry, image_id)
    assert planned["decision"] == "delete"
    assert planned["bytes"] < MB // 10
    assert planned["bytes_held_by_cache"] == pytest.approx(50 * MB, rel=0.01)

    # The user deletes it by hand: the engine's usage barely moves.
    before = sj(engine).usage()
    remove_image_by_hand(engine, "big:1")
    assert tags_of(engine, image_id) is None
    assert before - sj(engine).usage() < MB // 10

    # sparkjoy df: the 50 MB now sit in build cache, reclaimable by a prune that includes it.
    as_of = utcnow() + timedelta(days=1)
    df = cli(engine, "df", "--as-of", iso(as_of))
    [cache] = [s for s in df["summary"] if s["kind"] == "build-cache"]
    assert cache["bytes"] >= 50 * MB
    assert cache["reclaimable_bytes"] == cache["bytes"]

    real = cli_prune(engine, as_of=as_of)
    assert real["reclaimed_bytes"] >= 50 * MB
    assert real["reclaimed_bytes"] == pytest.approx(real["predicted_bytes"], rel=0.02)
    assert real["reclaimed_bytes"] == pytest.approx(cache["bytes"], rel=0.02)
    assert build_cache(engine) == []


# -- h --------------------------------------------------------------------------------------


def test_h_a_prune_with_build_cache_during_a_buildkit_build_neither_deletes_its_records_nor_breaks_it(
        clean_engine):
    engine = clean_engine
    # An earlier build leaves cache the running build reuses (the busybox steps) and
    # cache of its own that the prune may take.
    earlier = build(engine, BUSYBOX_BASE + "RUN echo earlier > /earlier\n", "earlier:1")

    gate = StepGate()
    with start_build(engine, BUSYBOX_BASE + gate.run_step() + "RUN echo later > /later\n", "later:1",
                     files={"marker": b"later"}) as running:
        # Once the RUN step runs, the records it uses stay in use until it ends.
        in_use = wait_until(
            lambda: gate.waiting() and {r["ID"] for r in build_cache(engine) if r.get("InUse")},
            timeout=60, what="the build's RUN step to run with its cache records in use")
        as_of = utcnow() + timedelta(days=1)
        data = cli_prune(engine, "--max-age=-1s", "--keep-recent", "0", as_of=as_of)
        assert running.running, "the build finished before the prune: the test proves nothing"
        for record_id in in_use:
            entry = json_object(data, record_id)
            assert entry["decision"] == "keep", entry
            assert entry["reason"] == "in use by a running build"
        still_there = {r["ID"] for r in build_cache(engine)}
        assert in_use <= still_there
        assert json_ids(data, kind="build-cache", result="deleted"), "the prune deleted no cache at all"
        assert json_object(data, earlier)["result"] == "deleted"

        gate.open()
        later = running.wait(timeout=120)
    assert tags_of(engine, later) == {"later:1"}
