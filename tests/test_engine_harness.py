"""The test harness itself: the private engine and the fixture helpers do what they say."""

from __future__ import annotations

import os
from contextlib import closing
from datetime import datetime, timezone

import pytest

from tests.engine import IsolatedEngine
from tests.fixtures import (
    StepGate,
    BUSYBOX_BASE,
    FixtureError,
    build,
    busybox_image,
    import_image,
    load_image,
    make_layer,
    run_container,
    start_build,
    wait_until,
)

ZERO_TIME = "0001-01-01T00:00:00Z"


def df_image(engine: IsolatedEngine, image_id: str) -> dict:
    with closing(engine.client()) as client:
        [entry] = [image for image in client.df()["Images"] if image["Id"] == image_id]
    return entry


def test_the_engine_answers_ping_on_its_own_socket(engine):
    assert engine.ping()
    assert engine.host == f"unix://{engine.socket_path}"
    assert engine.env()["DOCKER_HOST"] == engine.host
    with closing(engine.client()) as client:
        assert client.ping() is True
        info = client.info()
    assert info["DockerRootDir"] == str(engine.data_root)


def test_an_imported_image_of_5_mb_has_that_size_in_system_df(clean_engine):
    image_id = import_image(clean_engine, 5_000_000, "five:mb")

    entry = df_image(clean_engine, image_id)

    assert entry["Size"] == pytest.approx(5_000_000, rel=0.01)
    assert entry["RepoTags"] == ["five:mb"]


def test_an_image_imported_as_old_shows_that_creation_time(clean_engine):
    created = datetime(2020, 5, 17, 12, 30, tzinfo=timezone.utc)

    image_id = import_image(clean_engine, 1000, "old:1", created=created)

    with closing(clean_engine.client()) as client:
        [listed] = [image for image in client.api.images() if image["Id"] == image_id]
        inspected = client.api.inspect_image(image_id)
    assert listed["Created"] == int(created.timestamp())
    assert inspected["Created"] == "2020-05-17T12:30:00Z"


def test_loading_never_sets_last_tag_time_but_tagging_does(clean_engine):
    untagged = import_image(clean_engine, 1000, None)
    tagged_by_manifest = import_image(clean_engine, 1000, "manifest:1", tag_on_load=True)
    tagged_by_api = import_image(clean_engine, 1000, "api:1")

    with closing(clean_engine.client()) as client:
        def last_tag_time(image_id: str) -> str:
            return client.api.inspect_image(image_id)["Metadata"].get("LastTagTime", ZERO_TIME)

        assert last_tag_time(untagged) == ZERO_TIME
        assert last_tag_time(tagged_by_manifest) == ZERO_TIME
        assert client.api.inspect_image(tagged_by_manifest)["RepoTags"] == ["manifest:1"]
        assert last_tag_time(tagged_by_api) != ZERO_TIME


def test_images_made_from_the_same_layer_share_it_in_system_df(clean_engine):
    shared = [make_layer(2_000_000)]
    base = load_image(clean_engine, shared, "base:1")
    child = import_image(clean_engine, 1_000_000, "child:1", base=shared)

    base_entry = df_image(clean_engine, base)
    child_entry = df_image(clean_engine, child)

    assert base_entry["SharedSize"] == 2_000_000
    assert child_entry["Size"] == 3_000_000
    assert child_entry["Size"] - child_entry["SharedSize"] == 1_000_000


def test_a_seed_reproduces_a_layer_and_no_seed_never_does():
    assert make_layer(100, seed=7).diff_id == make_layer(100, seed=7).diff_id
    assert make_layer(100).diff_id != make_layer(100).diff_id


def test_a_buildkit_build_succeeds_and_leaves_build_cache_records(clean_engine):
    image_id = build(clean_engine, BUSYBOX_BASE + "RUN echo built > /proof\n", "bk:1",
                     labels={"sparkjoy.test": "bk"})

    with closing(clean_engine.client()) as client:
        inspected = client.api.inspect_image(image_id)
        cache = client.df()["BuildCache"]
    assert inspected["RepoTags"] == ["bk:1"]
    assert inspected["Config"]["Labels"] == {"sparkjoy.test": "bk"}
    assert inspected["Metadata"]["LastTagTime"] != ZERO_TIME
    assert len(cache) >= 2
    assert {"source.local", "regular"} <= {record["Type"] for record in cache}
    assert not any(record["InUse"] for record in cache)


def test_a_classic_build_works_and_records_a_parent(clean_engine):
    image_id = build(clean_engine, BUSYBOX_BASE + "RUN echo built > /proof\n", "classic:1",
                     buildkit=False, files={"data/extra.txt": b"extra"})

    with closing(clean_engine.client()) as client:
        inspected = client.api.inspect_image(image_id)
        cache = client.df()["BuildCache"]
    assert inspected["RepoTags"] == ["classic:1"]
    # The classic builder keeps intermediate images, so the result has a parent...
    assert inspected["Parent"].startswith("sha256:")
    # ...and makes no BuildKit cache.
    assert not cache  # None when there are no records


def test_a_running_build_shows_in_use_cache_records_until_it_finishes(clean_engine):
    with closing(clean_engine.client()) as client:
        def records_in_use() -> list[dict]:
            return [record for record in client.df()["BuildCache"] or [] if record["InUse"]]

        gate = StepGate()
        with start_build(clean_engine, BUSYBOX_BASE + gate.run_step() + "RUN echo done > /proof\n",
                         "slow:1") as running:
            wait_until(lambda: (gate.waiting() and records_in_use()) or not running.running,
                       timeout=60, what="a build-cache record in use")
            assert running.running, running.output()
            gate.open()
            image_id = running.wait()

        assert records_in_use() == []
        assert client.api.inspect_image("slow:1")["Id"] == image_id


def test_a_failing_build_raises_with_the_cli_output(clean_engine):
    with pytest.raises(FixtureError, match="no-such-file"):
        build(clean_engine, "FROM scratch\nCOPY no-such-file /x\n", None)


@pytest.mark.parametrize("state", ["running", "exited", "created"])
def test_a_container_can_be_made_in_each_state(clean_engine, state):
    image_id = busybox_image(clean_engine, "box:1")

    container_id = run_container(clean_engine, image_id, state=state, labels={"state": state})

    with closing(clean_engine.client()) as client:
        container = client.containers.get(container_id)
    assert container.status == state
    assert container.labels == {"state": state}
    assert container.image.id == image_id


def test_clean_engine_starts_empty_even_after_a_messy_test(clean_engine):
    # This test's own clean_engine has already run, so just check the result.
    with closing(clean_engine.client()) as client:
        assert client.containers.list(all=True) == []
        assert client.api.images(all=True) == []
        assert not client.df()["BuildCache"]


def test_the_engine_keeps_its_data_across_a_restart(engine_factory):
    engine = engine_factory()
    image_id = import_image(engine, 1000, "kept:1")
    container_id = run_container(engine, busybox_image(engine), state="exited")

    engine.restart()

    assert engine.ping()
    with closing(engine.client()) as client:
        assert client.api.inspect_image("kept:1")["Id"] == image_id
        assert client.containers.get(container_id).status == "exited"


def test_an_engine_on_a_sized_data_root_sees_that_disk(engine_factory):
    engine = engine_factory(data_root_size=200 * 1024 * 1024)
    tmpdir = engine.tmpdir

    stats = os.statvfs(engine.data_root)
    total = stats.f_blocks * stats.f_frsize
    assert 150 * 1024 * 1024 < total <= 200 * 1024 * 1024
    assert import_image(engine, 1_000_000, "fits:1").startswith("sha256:")

    engine.stop()
    assert not tmpdir.exists()
