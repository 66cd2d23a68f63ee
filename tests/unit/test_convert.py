"""Engine JSON -> model values: odd, missing and hostile fields give the safe reading."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkjoy.engine.convert import (
    image_inspect_essentials,
    EMPTY_LAYER_DIFF_ID,
    as_int,
    build_cache_from,
    chain_ids,
    container_from,
    image_from,
    history_steps,
    layers_from,
    parse_time,
    real_tags,
    volume_from,
)
from sparkjoy.model import ContainerState, Layer

UTC = timezone.utc
# How many random hostile engine answers the converters get; docs/reliability.md quotes it.
HOSTILE_JSON_EXAMPLES = 300


# -- timestamps ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)),
        ("2024-05-01T10:00:00.123456789Z", datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2024-05-01T10:00:00.5Z", datetime(2024, 5, 1, 10, 0, 0, 500000, tzinfo=UTC)),
        ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)),
        # The engine writes LastTagTime in the daemon's local zone, with nanoseconds.
        ("2024-05-01T12:00:00.785614954+02:00", datetime(2024, 5, 1, 10, 0, 0, 785614, tzinfo=UTC)),
        ("2024-05-01T05:00:00.785614954-05:00", datetime(2024, 5, 1, 10, 0, 0, 785614, tzinfo=UTC)),
        ("2024-05-01T04:30:00.1-05:30", datetime(2024, 5, 1, 10, 0, 0, 100000, tzinfo=UTC)),
        ("2024-05-01T10:00:00", datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)),
        (1714557600, datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)),
        (1714557600.5, datetime(2024, 5, 1, 10, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_an_engine_timestamp_becomes_an_aware_utc_time(value, expected: datetime) -> None:
    parsed = parse_time(value)
    assert parsed == expected
    assert parsed.utcoffset().total_seconds() == 0


@pytest.mark.parametrize(
    "value",
    [
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00.000000000Z",
        0,
        -5,
        None,
        "",
        "yesterday",
        "2024-13-45T99:99:99Z",
        True,
        False,
        [],
        {},
        float("nan"),
        float("inf"),
        10**30,
        "2024-05-01T10:00:00.Z+",
    ],
)
def test_a_zero_missing_or_garbage_timestamp_is_no_time_at_all(value) -> None:
    assert parse_time(value) is None


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=40), st.integers(), st.floats(), st.none(), st.booleans()))
def test_parse_time_never_raises_and_returns_utc_or_nothing(value) -> None:
    parsed = parse_time(value)
    assert parsed is None or parsed.utcoffset().total_seconds() == 0


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=datetime(1971, 1, 2), max_value=datetime(2200, 1, 1)),
    st.integers(0, 999),
    st.integers(-14 * 60, 14 * 60),
)
def test_a_time_with_nanoseconds_and_any_offset_parses_to_the_same_instant(local, nanos, offset_minutes) -> None:
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    text = f"{local:%Y-%m-%dT%H:%M:%S}.{local.microsecond:06d}{nanos:03d}{sign}{hours:02d}:{minutes:02d}"
    expected = (local - timedelta(minutes=offset_minutes)).replace(tzinfo=UTC)
    assert parse_time(text) == expected


# -- numbers and tags ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(5, 5), (5.9, 5), (None, -1), (True, -1), ("5", -1), ([], -1), (float("nan"), -1), (float("inf"), -1), (float("-inf"), -1)],
)
def test_a_number_field_of_the_wrong_type_reads_as_unknown(value, expected: int) -> None:
    assert as_int(value) == expected


def test_a_json_size_too_large_for_a_float_reads_as_unknown() -> None:
    size = json.loads('{"Size": 1e400}')["Size"]
    assert math.isinf(size)
    assert as_int(size) == -1


def test_none_none_tags_are_no_tags() -> None:
    assert real_tags(["<none>:<none>", "app:1", "", "<none>@<none>"]) == ("app:1",)


# -- layers -----------------------------------------------------------------------------------


def test_chain_ids_follow_the_image_spec() -> None:
    a, b, c = "sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "c" * 64
    chain_ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    chain_abc = "sha256:" + hashlib.sha256(f"{chain_ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, chain_ab, chain_abc]
    assert chain_ids([]) == []


def test_chain_ids_of_the_same_layer_on_different_parents_differ() -> None:
    a, b, c = "sha256:a", "sha256:b", "sha256:c"
    assert chain_ids([a, c])[1] != chain_ids([b, c])[1]


def history(*sizes: int) -> list[dict]:
    """Given step sizes oldest first, return the engine's history answer (newest first)."""
    return [{"Size": size, "CreatedBy": f"step {i}"} for i, size in reversed(list(enumerate(sizes)))]


def inspect_with(*diff_ids: str) -> dict:
    return {"RootFS": {"Type": "layers", "Layers": list(diff_ids)}}


def test_layers_line_up_with_history_steps_that_made_a_layer() -> None:
    # FROM base (50), ENV (no layer), COPY (3), LABEL (no layer).
    found = layers_from(inspect_with("sha256:base", "sha256:copy"), history(50, 0, 3, 0), 53)
    chains = chain_ids(["sha256:base", "sha256:copy"])
    assert found == (Layer(chains[0], 50), Layer(chains[1], 3))


def test_an_empty_layer_gets_size_zero_and_the_others_keep_their_sizes() -> None:
    # A RUN that changed nothing makes the empty tarball's layer; its step reports 0 bytes.
    found = layers_from(
        inspect_with("sha256:base", EMPTY_LAYER_DIFF_ID, "sha256:top"), history(50, 0, 0, 7), 57
    )
    assert [layer.size for layer in found] == [50, 0, 7]


def test_layers_that_cannot_be_lined_up_fall_back_to_whole_image_accounting() -> None:
    assert layers_from(inspect_with("sha256:a", "sha256:b"), history(50, 3, 4), 57) == ()


def test_layers_whose_sizes_do_not_add_up_to_the_image_size_fall_back() -> None:
    assert layers_from(inspect_with("sha256:a", "sha256:b"), history(50, 3), 60) == ()


@pytest.mark.parametrize(
    ("inspect", "hist"),
    [
        (None, history(1)),
        ({}, history(1)),
        ({"RootFS": None}, history(1)),
        ({"RootFS": "layers"}, history(1)),
        ({"RootFS": {"Layers": None}}, history(1)),
        ({"RootFS": {"Layers": 5}}, history(1)),
        ({"RootFS": {"Layers": {"sha256:a": 1}}}, history(1)),
        (inspect_with("sha256:a"), None),
        (inspect_with("sha256:a"), {"Size": 1}),
        (inspect_with("sha256:a"), [None, "x", 5]),
        (inspect_with("sha256:a"), [{"Size": "1"}]),
    ],
)
def test_malformed_inspect_or_history_answers_give_no_layer_detail(inspect, hist) -> None:
    assert layers_from(inspect, hist, 1) == ()


def test_a_layer_list_sent_as_a_string_is_not_read_as_one_layer_per_character() -> None:
    # Eight one-byte steps and an 8-byte image would line up with the 8 characters.
    assert layers_from({"RootFS": {"Layers": "sha256:a"}}, history(*[1] * 8), 8) == ()


# -- whole objects from hostile JSON ---------------------------------------------------------------


def test_an_image_with_nulls_everywhere_reads_as_unknown_times_and_sizes() -> None:
    summary = {"Id": "sha256:x", "RepoTags": None, "Created": None, "Size": None, "SharedSize": None, "Labels": None}
    inspect = {"Metadata": None, "RepoTags": None, "Config": None, "Created": None, "Parent": None}
    image = image_from(summary, inspect, ())
    assert image.id == "sha256:x"
    assert image.repo_tags == ()
    assert image.created is None and image.last_tag_time is None
    assert image.size == 0 and image.shared_size == -1
    assert image.labels == {} and image.parent_id == ""


def test_an_image_takes_tags_and_last_tag_time_from_inspect_and_drops_none_tags() -> None:
    summary = {"Id": "sha256:x", "RepoTags": ["<none>:<none>"], "Size": 10, "SharedSize": 4, "Labels": {"a": "1"}}
    inspect = {
        "RepoTags": ["app:1", "<none>:<none>"],
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
        "Created": "2024-05-01T10:00:00.000000001Z",
    }
    image = image_from(summary, inspect, ())
    assert image.repo_tags == ("app:1",)
    assert image.last_tag_time is None  # loaded images have the zero time: no tag time, not "old"
    assert image.created == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert (image.size, image.shared_size, image.labels) == (10, 4, {"a": "1"})


def test_image_labels_fall_back_to_the_config_and_odd_values_become_text() -> None:
    image = image_from({"Id": "x", "Labels": {}}, {"Config": {"Labels": {"n": 5, "null": None}}}, ())
    assert image.labels == {"n": "5", "null": ""}


@pytest.mark.parametrize("state", [None, "", "Running", "weird", 5, ["exited"], {"Status": "exited"}])
def test_a_container_in_an_unknown_or_odd_state_reads_as_in_use(state) -> None:
    summary = {"Id": "c", "State": state}
    container = container_from(summary, None)
    if state == "Running":
        assert container.state is ContainerState.RUNNING
    else:
        assert container.state is ContainerState.UNKNOWN
    assert not container.state.stopped


def test_the_inspected_state_wins_over_the_summary_and_gives_the_finish_time() -> None:
    summary = {"Id": "c", "State": "running", "Names": ["/web"], "ImageID": "sha256:i", "Image": "app:1",
               "Created": 1714557600, "SizeRw": 12,
               "Mounts": [{"Type": "volume", "Name": "data"}, {"Type": "bind", "Name": "x"}, "junk", {"Type": "volume"}]}
    inspect = {"State": {"Status": "exited", "FinishedAt": "2024-05-01T11:00:00.5Z"}}
    container = container_from(summary, inspect)
    assert container.state is ContainerState.EXITED
    assert container.finished == datetime(2024, 5, 1, 11, 0, 0, 500000, tzinfo=UTC)
    assert container.created == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert container.names == ("web",)
    assert container.volumes == ("data",)
    assert container.size_rw == 12


def test_a_never_started_container_has_no_finish_time() -> None:
    inspect = {"State": {"Status": "created", "FinishedAt": "0001-01-01T00:00:00Z"}}
    container = container_from({"Id": "c", "State": "created"}, inspect)
    assert container.state is ContainerState.CREATED and container.finished is None


def test_a_container_with_garbage_fields_still_converts() -> None:
    summary = {"Id": "c", "Names": "web", "ImageID": 5, "Labels": ["a"], "Mounts": {"a": 1}, "SizeRw": "big"}
    container = container_from(summary, {"State": "exited"})
    assert container.names == () and container.image_id == "" and container.labels == {}
    assert container.volumes == () and container.size_rw == 0
    assert container.state is ContainerState.UNKNOWN


@pytest.mark.parametrize("value", [None, "yes", 1, "false"])
def test_a_build_cache_record_with_unknown_in_use_or_shared_reads_as_both(value) -> None:
    record = build_cache_from({"ID": "r", "InUse": value, "Shared": value, "Size": 10})
    assert record.in_use is True
    assert record.shared is True


def test_a_build_cache_record_reads_its_parent_from_parents_and_clamps_its_size() -> None:
    record = build_cache_from(
        {"ID": "r", "Parents": ["p1", "p2"], "InUse": False, "Shared": False, "Size": -3,
         "LastUsedAt": "2024-05-01T10:00:00.123456789Z", "CreatedAt": None}
    )
    assert record.parent == "p1"
    assert record.size == 0
    assert record.in_use is False and record.shared is False
    assert record.last_used == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert record.created is None


def test_a_volume_without_usage_data_has_unknown_size_and_users() -> None:
    volume = volume_from({"Name": "v", "UsageData": None, "Labels": None, "CreatedAt": "0001-01-01T00:00:00Z"})
    assert (volume.size, volume.ref_count, volume.labels, volume.created) == (-1, -1, {}, None)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=10,
)
FIELDS = ["Id", "ID", "RepoTags", "Created", "Size", "SharedSize", "Labels", "State", "Names", "Mounts",
          "Metadata", "Config", "Parent", "ParentId", "InUse", "Shared", "Parents", "LastUsedAt", "CreatedAt",
          "UsageData", "RootFS", "SizeRw", "ImageID", "Status", "FinishedAt", "Layers", "LastTagTime", "RefCount"]
HOSTILE = st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=8)


@settings(max_examples=HOSTILE_JSON_EXAMPLES, deadline=None)
@given(HOSTILE, HOSTILE | st.none(), st.lists(JSON_VALUES, max_size=4) | JSON_VALUES)
def test_hostile_engine_json_never_makes_a_converter_raise(summary, inspect, hist) -> None:
    image_from(summary, inspect, layers_from(inspect, hist, as_int(summary.get("Size"), -1)))
    container = container_from(summary, inspect)
    record = build_cache_from(summary)
    volume_from(summary)
    # The safe readings: anything not clearly stopped is in use; unknown flags are True.
    if not isinstance(summary.get("InUse"), bool):
        assert record.in_use
    if container.state.stopped:
        assert container.state.value in ("created", "exited", "dead")


# -- issue 5, W1: BuildKit images with a 0-byte RUN layer and a trailing LABEL ------------------


def buildkit_history(*steps: tuple[int, str]) -> list[dict]:
    """Given (size, CreatedBy) steps oldest first, return the engine's history answer (newest first)."""
    return [{"Size": size, "CreatedBy": by, "Comment": "buildkit.dockerfile.v0"} for size, by in reversed(steps)]


# The shape of W1's built app images (GET /images/{id}/history on Engine 20.10): the busybox
# --install RUN made a layer of 0 bytes, the LABEL made none. Neither the step count (4), the
# sized steps (2) nor the non-empty diff IDs (3) match the 3 layers, so these images used to
# get no layer detail; their top layer, which a BuildKit cache record holds, was then predicted
# as freed by deleting the image (W1's image-only prune: +4,629,046 bytes, +1.53%).
W1_APP_STEPS = (
    (1982256, "COPY busybox /bin/busybox # buildkit"),
    (0, "RUN /bin/busybox --install -s /bin # buildkit"),
    (447293, "RUN /bin/sh -c head -c 447293 /dev/urandom > /app.bin # buildkit"),
    (0, "LABEL bench.build=bench-w1/worker-0"),
)


def test_a_zero_byte_run_layer_and_a_label_step_line_up_by_their_instructions() -> None:
    diff_ids = ["sha256:copy", "sha256:install", "sha256:app"]
    found = layers_from(inspect_with(*diff_ids), buildkit_history(*W1_APP_STEPS), 2429549)
    assert found == tuple(Layer(c, s) for c, s in zip(chain_ids(diff_ids), [1982256, 0, 447293]))


def test_classic_builder_nop_steps_are_read_as_config_only_or_copy() -> None:
    # FROM base (50), RUN that made a 0-byte layer (unknown by its text), COPY of 0 bytes,
    # ENV (no layer), RUN (7): 4 layers.
    steps = [(50, "/bin/sh -c #(nop) ADD file:abc in / "), (0, "/bin/sh -c ln -s a b"),
             (0, "/bin/sh -c #(nop) COPY file:def in /empty "), (0, "/bin/sh -c #(nop)  ENV A=b"),
             (7, "/bin/sh -c echo hi > /x")]
    found = layers_from(inspect_with("sha256:a", "sha256:b", "sha256:c", "sha256:d"), buildkit_history(*steps), 57)
    assert [layer.size for layer in found] == [50, 0, 0, 7]


def test_zero_byte_steps_that_could_line_up_either_way_still_give_no_layer_detail() -> None:
    # Same sizes as W1's app images, but steps that do not name their instruction: the 447293
    # bytes could be the second or the third layer. No guess.
    assert layers_from(inspect_with("sha256:a", "sha256:b", "sha256:c"), history(1982256, 0, 447293, 0),
                       2429549) == ()


def test_instructions_that_contradict_the_layer_count_are_ignored() -> None:
    # Two RUN steps of 0 bytes named as layers, but only 3 layers: the hints cannot hold; by
    # sizes alone the last step's 3 bytes can only be the third layer.
    steps = [(5, "COPY a /a"), (0, "RUN true"), (0, "RUN true"), (0, "LABEL x=y"), (3, "COPY b /b")]
    found = layers_from(inspect_with("sha256:a", "sha256:b", "sha256:c"), buildkit_history(*steps), 8)
    assert [layer.size for layer in found] == [5, 0, 3]


def test_w1s_built_image_top_layer_held_by_its_cache_record_is_held_not_freed() -> None:
    """Issue 5, W1's image-only prune: deleting a BuildKit-built image whose top layer a cache
    record still holds frees nothing of that layer (the engine moves it from LayersSize to the
    record, now unshared); it is "held by cache". Engine answers abridged from the W1 run."""
    from sparkjoy.model import Kind
    from sparkjoy.usage import LayerLedger

    from .builders import record, snapshot

    diff_ids = ["sha256:copy", "sha256:install", "sha256:app"]
    inspect = {"Id": "sha256:app-image", "RootFS": {"Type": "layers", "Layers": diff_ids}}
    summary = {"Id": "sha256:app-image", "Size": 2429549, "SharedSize": 1982256}
    built = image_from(summary, inspect, layers_from(inspect, buildkit_history(*W1_APP_STEPS), 2429549))
    base_inspect = {"Id": "sha256:base", "RootFS": {"Type": "layers", "Layers": diff_ids[:2]}}
    base = image_from({"Id": "sha256:base", "Size": 1982256, "SharedSize": 1982256}, base_inspect,
                      layers_from(base_inspect, buildkit_history(*W1_APP_STEPS[:2]), 1982256))
    records = [
        record("copy", shared=True, size=1982256),
        record("install", shared=True, size=0, parent="copy"),
        record("app", shared=True, size=447293, parent="install"),
    ]
    ledger = LayerLedger(snapshot([base, built], build_cache=records))
    freed = ledger.freed([(Kind.IMAGE, built.id)])
    assert freed.total == 0
    assert freed.total_held_by_cache == 447293


# -- what the history cache keeps -----------------------------------------------------------------

_CREATED_BY = st.one_of(
    st.none(),
    st.integers(),
    st.sampled_from([
        "RUN /bin/sh -c make", "RUN |1 TOKEN=s3cret /bin/sh -c make", "COPY file:ab in / ", "ADD x /",
        "LABEL a=b", "ENV A=1", "WORKDIR /app", "CMD [\"sh\"]", "/bin/sh -c #(nop)  LABEL a=b",
        "/bin/sh -c #(nop) COPY file:ab in /", "/bin/sh -c #(nop) WORKDIR /x", "/bin/sh -c make",
        "", "   ", "#(nop)", "/bin/sh -c #(nop)",
    ]),
    st.text(max_size=30),
)
_STEP = st.one_of(
    st.fixed_dictionaries({"Size": st.one_of(st.integers(0, 5), st.none(), st.text(max_size=2)),
                           "CreatedBy": _CREATED_BY}),
    st.none(),
    st.integers(),
)
_DIFF_ID = st.sampled_from(["sha256:a", "sha256:b", "sha256:c", EMPTY_LAYER_DIFF_ID])


@settings(max_examples=2000)
@given(st.lists(_STEP, max_size=6), st.lists(_DIFF_ID, min_size=1, max_size=5), st.integers(-1, 12))
def test_the_steps_the_history_cache_keeps_give_the_same_layers_as_the_full_history(steps, diff_ids, size) -> None:
    kept = history_steps(steps)
    assert kept is not None
    assert layers_from(inspect_with(*diff_ids), kept, size) == layers_from(inspect_with(*diff_ids), steps, size)


def test_the_history_cache_keeps_the_instruction_never_the_command() -> None:
    kept = history_steps([{"Size": 3, "CreatedBy": "RUN |1 TOKEN=s3cret /bin/sh -c make", "Comment": "x"},
                          {"Size": 0, "CreatedBy": "/bin/sh -c #(nop)  LABEL token=s3cret"},
                          {"Size": 9, "CreatedBy": "/bin/sh -c curl -H s3cret"}])
    assert kept == [{"Size": 3, "CreatedBy": "RUN"}, {"Size": 0, "CreatedBy": "/bin/sh -c #(nop) LABEL"},
                    {"Size": 9, "CreatedBy": ""}]
    assert "s3cret" not in repr(kept)
    assert history_steps({"Size": 1}) is None


# -- the inspect a remembered answer keeps ---------------------------------------------------

_ANY = st.one_of(st.none(), st.integers(-2, 3), st.text(max_size=4), st.booleans(),
                 st.lists(st.sampled_from(["sha256:a", "sha256:b", "app:1", "<none>:<none>", 3]), max_size=3),
                 st.dictionaries(st.sampled_from(["LastTagTime", "Layers", "Labels", "Env"]),
                                 st.one_of(st.text(max_size=3), st.lists(st.sampled_from(["sha256:a", "x"]), max_size=2),
                                           st.dictionaries(st.sampled_from(["a", "b"]), st.text(max_size=2))),
                                 max_size=3))
_INSPECT = st.one_of(
    st.dictionaries(st.sampled_from(["Id", "RepoTags", "Created", "Size", "Parent", "Metadata", "RootFS", "Config",
                                     "ContainerConfig", "Comment", "Author"]), _ANY, max_size=8),
    st.fixed_dictionaries({
        "Id": st.just("sha256:1"),
        "RepoTags": st.lists(st.sampled_from(["app:1", "app:2"]), max_size=2),
        "Created": st.sampled_from(["2026-11-01T10:00:00.5Z", "0001-01-01T00:00:00Z"]),
        "Size": st.integers(0, 9),
        "Metadata": st.fixed_dictionaries({"LastTagTime": st.sampled_from(["2026-11-02T10:00:00Z", ""])}),
        "RootFS": st.fixed_dictionaries({"Layers": st.lists(st.sampled_from(["sha256:a", "sha256:b"]), max_size=3)}),
        "Config": st.fixed_dictionaries({"Labels": st.dictionaries(st.sampled_from(["team"]), st.text(max_size=2)),
                                         "Env": st.just(["TOKEN=s3cret"]), "Cmd": st.just(["/bin/sh"])}),
    }),
    st.none(), st.integers(), st.text(max_size=3),
)
_SUMMARY = st.fixed_dictionaries({"Id": st.just("sha256:1"), "Size": st.integers(-1, 9),
                                  "SharedSize": st.integers(-1, 9), "RepoTags": st.lists(st.just("app:1"), max_size=1)})


@settings(max_examples=2000)
@given(_INSPECT, _SUMMARY, st.lists(_STEP, max_size=4))
def test_a_remembered_inspect_gives_the_same_image_as_the_whole_answer(inspect, summary, steps) -> None:
    kept = image_inspect_essentials(inspect)
    size = summary["Size"]
    assert layers_from(kept, steps, size) == layers_from(inspect, steps, size)
    assert image_from(summary, kept, ()) == image_from(summary, inspect, ())


def test_a_remembered_inspect_keeps_no_environment_or_command() -> None:
    kept = image_inspect_essentials({
        "Id": "sha256:1", "RepoTags": ["app:1"], "Metadata": {"LastTagTime": "2026-11-02T10:00:00Z", "Other": 1},
        "Config": {"Env": ["TOKEN=s3cret"], "Cmd": ["/bin/sh", "-c", "s3cret"], "Labels": {"team": "a"}},
        "ContainerConfig": {"Env": ["TOKEN=s3cret"]}, "RootFS": {"Type": "layers", "Layers": ["sha256:a"]},
    })
    assert "s3cret" not in json.dumps(kept)
    assert kept == {"Id": "sha256:1", "RepoTags": ["app:1"], "Metadata": {"LastTagTime": "2026-11-02T10:00:00Z"},
                    "Config": {"Labels": {"team": "a"}}, "RootFS": {"Layers": ["sha256:a"]}}


def test_an_event_is_told_apart_in_the_buffer_by_its_time_kind_action_and_object() -> None:
    from sparkjoy.engine.convert import event_anchor

    assert event_anchor({"Type": "image", "Action": "tag", "Actor": {"ID": "sha256:ab"}, "timeNano": 7}) == \
        "7 image tag sha256:ab"
    assert event_anchor({"Type": "container", "Action": "die", "id": "c1", "timeNano": 9}) == "9 container die c1"
    for no_time in ({"Type": "image"}, {"timeNano": 0}, {"timeNano": True}, {"timeNano": "7"}, "garbage"):
        assert event_anchor(no_time) is None


# -- layers told once, kept with a remembered inspect ----------------------------------------


def test_layers_told_for_an_image_come_back_from_its_remembered_inspect() -> None:
    from sparkjoy.engine.convert import told_layers, with_told_layers

    inspect = {"Id": "sha256:" + "a" * 64, "RepoTags": ["x:1"]}
    layers = (Layer("sha256:" + "1" * 64, 100), Layer("sha256:" + "2" * 64, 0))
    kept = with_told_layers(inspect, layers)
    assert kept is not inspect and "SparkjoyLayers" not in inspect, "the remembered inspect itself is left as it was"
    assert told_layers(json.loads(json.dumps(kept))) == layers, "the layers survive the state database's JSON"
    assert told_layers(inspect) is None


@pytest.mark.parametrize("kept", [
    "nonsense", [["sha256:x", -1]], [["sha256:x", True]], [["sha256:x"]], [[1, 2]], [["sha256:x", 1.5]], {"a": 1},
])
def test_layers_kept_in_an_unreadable_form_are_not_used(kept) -> None:
    from sparkjoy.engine.convert import told_layers

    assert told_layers({"Id": "sha256:" + "a" * 64, "SparkjoyLayers": kept}) is None


def test_a_remembered_container_inspect_keeps_its_state_and_finish_time_only() -> None:
    from sparkjoy.engine.convert import container_inspect_essentials

    answer = {"Id": "c1", "State": {"Status": "exited", "FinishedAt": "2024-05-01T10:00:00Z", "Pid": 0},
              "Config": {"Env": ["TOKEN=secret"]}, "Name": "/web"}
    kept = container_inspect_essentials(answer)
    assert kept == {"Id": "c1", "State": {"Status": "exited", "FinishedAt": "2024-05-01T10:00:00Z"}}
    assert container_from({"Id": "c1", "State": "exited"}, kept).finished == container_from(
        {"Id": "c1", "State": "exited"}, answer).finished
    assert container_inspect_essentials("garbage") == "garbage"
