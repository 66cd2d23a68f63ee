"""Size accounting: which bytes deleting a set of objects really frees (usage.LayerLedger)."""

from __future__ import annotations

import itertools

import pytest

from sparkjoy.model import Kind
from sparkjoy.usage import LayerLedger, engine_usage

from .builders import ago, container, image, layers, record, snapshot, volume

MB = 1_000_000

# A 50 MB base, a child that only adds a label (no layer of its own), a child adding 3 MB
# and one adding 1 MB: the shape of field case f.
BASE = layers(("base", 50 * MB))
FAMILY = snapshot(
    [
        image("base", "base:1", tagged=ago(days=2), layer_list=BASE),
        image("label-only", "app:label", tagged=ago(days=2), layer_list=BASE),
        image("three", "app:3", tagged=ago(days=2), layer_list=layers(("base", 50 * MB), ("three", 3 * MB))),
        image("one", "app:1", tagged=ago(days=2), layer_list=layers(("base", 50 * MB), ("one", 1 * MB))),
    ]
)
FAMILY_KEYS = [(Kind.IMAGE, i.id) for i in FAMILY.images]


def img(image_id: str) -> tuple[Kind, str]:
    return (Kind.IMAGE, image_id)


def cache(record_id: str) -> tuple[Kind, str]:
    return (Kind.BUILD_CACHE, record_id)


def test_the_engine_usage_counts_each_layer_once() -> None:
    assert engine_usage(FAMILY) == 54 * MB


def test_deleting_one_child_frees_only_its_own_layer() -> None:
    freed = LayerLedger(FAMILY).freed([img("three")])
    assert freed.by_object == {img("three"): 3 * MB}
    assert freed.held_by_cache == {}


def test_deleting_a_child_that_only_adds_a_label_frees_nothing() -> None:
    assert LayerLedger(FAMILY).freed([img("label-only")]).total == 0


def test_deleting_both_children_frees_both_layers_but_not_the_base_that_stays() -> None:
    assert LayerLedger(FAMILY).freed([img("three"), img("one")]).total == 4 * MB


def test_deleting_everything_frees_every_layer_exactly_once() -> None:
    freed = LayerLedger(FAMILY).freed(FAMILY_KEYS)
    assert freed.total == engine_usage(FAMILY) == 54 * MB
    # The base layer goes with the last of its four holders.
    assert freed.by_object[FAMILY_KEYS[-1]] == 50 * MB + 1 * MB


@pytest.mark.parametrize("size", range(len(FAMILY_KEYS) + 1))
def test_any_subset_in_any_order_frees_between_zero_and_the_engine_usage(size: int) -> None:
    ledger = LayerLedger(FAMILY)
    unique = {"base": 0, "label-only": 0, "three": 3 * MB, "one": 1 * MB}
    for subset in itertools.permutations(FAMILY_KEYS, size):
        freed = ledger.freed(list(subset))
        assert all(value >= 0 for value in freed.by_object.values())
        assert 0 <= freed.total <= engine_usage(FAMILY)
        # Reasoned independently: each child's own layer, plus the base once all four go.
        expected = sum(unique[key[1]] for key in subset) + (50 * MB if size == 4 else 0)
        assert freed.total == expected


def test_unique_bytes_are_what_deleting_just_that_object_frees() -> None:
    ledger = LayerLedger(FAMILY)
    assert ledger.unique_bytes() == {img("three"): 3 * MB, img("one"): 1 * MB}


# -- build cache holding an image's layers (field case g) --------------------------------

BUILT = snapshot(
    [image("built", "app:1", tagged=ago(days=2), layer_list=layers(("layer", 50 * MB)))],
    build_cache=[
        record("holds-layer", last_used=ago(days=2), shared=True, size=50 * MB),
        record("unmatched-shared", last_used=ago(days=2), shared=True, size=7 * MB),
        record("private", last_used=ago(days=2), shared=False, size=2 * MB),
    ],
)


def test_a_shared_cache_record_is_matched_to_the_layer_of_its_size() -> None:
    assert LayerLedger(BUILT).record_layer == {"holds-layer": "layer"}


def test_deleting_an_image_whose_layer_cache_holds_frees_nothing_now_and_reports_it_held() -> None:
    freed = LayerLedger(BUILT).freed([img("built")])
    assert freed.by_object == {img("built"): 0}
    assert freed.held_by_cache == {img("built"): 50 * MB}


def test_deleting_the_image_and_its_cache_record_frees_the_layer_once_on_the_record() -> None:
    freed = LayerLedger(BUILT).freed([img("built"), cache("holds-layer")])
    assert freed.by_object == {img("built"): 0, cache("holds-layer"): 50 * MB}
    assert freed.held_by_cache == {}


def test_deleting_only_the_cache_record_frees_nothing_while_the_image_stays() -> None:
    freed = LayerLedger(BUILT).freed([cache("holds-layer")])
    assert freed.total == 0
    assert freed.held_by_cache == {}


def test_a_shared_record_matching_no_layer_frees_nothing() -> None:
    assert LayerLedger(BUILT).freed([cache("unmatched-shared")]).total == 0


def test_an_unshared_record_frees_its_own_size() -> None:
    assert LayerLedger(BUILT).freed([cache("private")]).total == 2 * MB


def test_engine_usage_counts_a_shared_record_as_part_of_the_layers() -> None:
    # 50 MB layer (held by image and record), the private record; the shared records add nothing.
    assert engine_usage(BUILT) == 52 * MB


def test_the_attributions_of_a_full_deletion_add_up_to_the_total() -> None:
    keys = [img("built"), cache("holds-layer"), cache("unmatched-shared"), cache("private")]
    freed = LayerLedger(BUILT).freed(keys)
    assert sum(freed.by_object.values()) == freed.total == 52 * MB
    assert set(freed.by_object) == set(keys)


def test_a_record_is_matched_to_the_layer_on_top_of_its_parent_record_layer() -> None:
    # Two 100-byte layers: "a-top" (on a 10-byte base) sorts first, but the record's parent
    # holds the 20-byte base under "z-top", so the record holds "z-top".
    shot = snapshot(
        [
            image("first", "a:1", tagged=ago(days=2), layer_list=layers(("a-base", 10), ("a-top", 100))),
            image("second", "z:1", tagged=ago(days=2), layer_list=layers(("z-base", 20), ("z-top", 100))),
        ],
        build_cache=[
            record("parent", shared=True, size=20),
            record("child", shared=True, size=100, parent="parent"),
        ],
    )
    ledger = LayerLedger(shot)
    assert ledger.record_layer == {"parent": "z-base", "child": "z-base/z-top"}
    assert ledger.records_holding_images() == {"parent": {"second"}, "child": {"second"}}


def test_a_record_without_a_parent_is_not_matched_through_a_record_with_an_empty_id() -> None:
    # The same two 100-byte layers; the record that holds the 20-byte base has an empty id
    # (the engine gave none), and the 100-byte record has no parent (""): nothing tells the
    # two layers apart, so it may hold either, not "z-top" through the record named "".
    shot = snapshot(
        [
            image("first", "a:1", tagged=ago(days=2), layer_list=layers(("a-base", 10), ("a-top", 100))),
            image("second", "z:1", tagged=ago(days=2), layer_list=layers(("z-base", 20), ("z-top", 100))),
        ],
        build_cache=[
            record("", shared=True, size=20),
            record("orphan", shared=True, size=100),
        ],
    )
    ledger = LayerLedger(shot)
    assert ledger.record_layer == {"": "z-base"}
    assert ledger.record_candidates == {"orphan": ("a-base/a-top", "z-base/z-top")}


def test_an_image_without_layer_detail_is_accounted_as_size_minus_shared_size() -> None:
    shot = snapshot([image("whole", "a:1", tagged=ago(days=2), size=100, shared_size=30)])
    assert LayerLedger(shot).freed([img("whole")]).by_object == {img("whole"): 70}


def test_an_image_without_layer_detail_whose_size_is_all_shared_frees_nothing() -> None:
    shot = snapshot([image("whole", "a:1", tagged=ago(days=2), size=100, shared_size=300)])
    assert LayerLedger(shot).freed([img("whole")]).total == 0


def test_an_image_without_layer_detail_and_an_unknown_shared_size_is_predicted_to_free_nothing() -> None:
    # Two images on the same 50-byte base, the engine computed no SharedSize (-1): counting each
    # whole would predict 100 bytes freed from a disk whose layers hold 50.
    shot = snapshot(
        [
            image("first", "a:1", tagged=ago(days=2), size=50, shared_size=-1),
            image("second", "b:1", tagged=ago(days=2), size=50, shared_size=-1),
        ],
        layers_size=50,
    )
    freed = LayerLedger(shot).freed([img("first"), img("second")])
    assert freed.total == 0


def test_containers_and_volumes_free_their_own_bytes() -> None:
    shot = snapshot(
        containers=[container("c", "gone", "exited", size_rw=5, finished=ago(days=2))],
        volumes=[volume("v", size=9), volume("unknown-size", size=-1)],
    )
    freed = LayerLedger(shot).freed([(Kind.CONTAINER, "c"), (Kind.VOLUME, "v"), (Kind.VOLUME, "unknown-size")])
    assert freed.by_object == {(Kind.CONTAINER, "c"): 5, (Kind.VOLUME, "v"): 9, (Kind.VOLUME, "unknown-size"): 0}
    assert engine_usage(shot) == 14


def test_a_layer_also_held_by_an_image_without_layer_detail_is_not_predicted_freed() -> None:
    # The engine says both images share 50 bytes; only the detailed one shows its layers.
    shot = snapshot(
        [
            image("detailed", "a:1", tagged=ago(days=2), layer_list=layers(("base", 50), ("own", 5)), shared_size=50),
            # Same base layer, but the engine gave no history: only its sizes are known.
            image("opaque", "b:1", tagged=ago(days=2), size=57, shared_size=50),
        ],
        layers_size=50 + 5 + 7,
    )
    ledger = LayerLedger(shot)
    assert ledger.freed([img("detailed")]).total == 5
    assert ledger.freed([img("opaque")]).total == 7
    # Deleting both frees the shared base too, once, on the last of them to go.
    both = ledger.freed([img("opaque"), img("detailed")])
    assert both.by_object == {img("opaque"): 7, img("detailed"): 55}
    assert both.total == shot.layers_size


def test_a_layer_of_several_detailed_images_is_shared_once_with_an_image_without_detail() -> None:
    # base is in both detailed images (a holding the ledger sees) and in the opaque one; each
    # detailed image's engine figure says 50 shared, which the holding already explains.
    shot = snapshot(
        [
            image("d1", "a:1", tagged=ago(days=2), layer_list=layers(("base", 50), ("one", 5)), shared_size=50),
            image("d2", "a:2", tagged=ago(days=2), layer_list=layers(("base", 50), ("two", 6)), shared_size=50),
            image("opaque", "b:1", tagged=ago(days=2), size=57, shared_size=50),
        ],
        layers_size=50 + 5 + 6 + 7,
    )
    ledger = LayerLedger(shot)
    assert ledger.freed([img("d1")]).total == 5
    # The base stays: the opaque image may hold it (its shared size is as large), so it counts
    # among the base's holders; deleting all three frees it.
    assert ledger.freed([img("d1"), img("d2")]).total == 5 + 6
    assert ledger.freed([img("d1"), img("d2"), img("opaque")]).total == shot.layers_size


def test_many_images_without_layer_detail_make_the_unexplained_share_never_predicted() -> None:
    opaque = [image(f"o{n}", f"b:{n}", tagged=ago(days=2), size=60, shared_size=50) for n in range(40)]
    shot = snapshot(
        [image("detailed", "a:1", tagged=ago(days=2), layer_list=layers(("base", 50), ("own", 5)), shared_size=50),
         *opaque],
        layers_size=50 + 5 + 40 * 10,
    )
    ledger = LayerLedger(shot)
    assert ledger.freed([img("detailed")]).total == 5
    everything = ledger.freed([img("detailed"), *(img(f"o{n}") for n in range(40))])
    assert everything.total == 5 + 40 * 10  # the base is never promised: too many possible holders


def test_records_that_fit_several_layers_of_one_size_may_hold_any_so_none_is_promised_freed() -> None:
    # Three rebuilt images, each with a 30-byte layer of its own, and three cache records of
    # 30 bytes: which record holds which layer cannot be told.
    shot = snapshot(
        [image(f"v{n}", f"bump:{n}", tagged=ago(days=2), layer_list=layers(("base", 10), (f"blob{n}", 30)))
         for n in range(3)],
        build_cache=[record(f"r{n}", shared=True, size=30) for n in range(3)],
    )
    ledger = LayerLedger(shot)
    assert ledger.record_layer == {}
    assert {r: set(c) for r, c in ledger.record_candidates.items()} == {
        f"r{n}": {"base/blob0", "base/blob1", "base/blob2"} for n in range(3)}
    images_only = ledger.freed([img("v0"), img("v1"), img("v2")])
    assert images_only.total == 10  # the shared base only
    assert images_only.total_held_by_cache == 90
    everything = ledger.freed([img("v0"), img("v1"), img("v2"), cache("r0"), cache("r1"), cache("r2")])
    assert everything.total == 100
    # Under a scope, each record belongs to every image it may hold.
    assert ledger.records_holding_images() == {f"r{n}": {"v0", "v1", "v2"} for n in range(3)}
