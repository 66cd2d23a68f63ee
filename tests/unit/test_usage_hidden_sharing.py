"""Images without layer detail that share bytes: the ledger's predictions against a ground truth.

The oracle: every layer is a set of holders (images, including the ones the engine gave no
layer detail for, and build-cache records); deleting a set frees a layer's bytes only when
all its holders are in the set. The engine's figures (size, shared size) are derived from
that truth the way the engine does (shared = layers another image also uses), and then some
images lose their layer detail. The ledger must never predict more than the truth frees.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict

import pytest

from sparkjoy.model import Image, Kind, Layer, Snapshot
from sparkjoy.usage import LayerLedger

from .builders import NOW, image, layers, record, snapshot

# The cases first found by a review of the first version of this rule; each failed then.


def img(image_id: str) -> tuple[Kind, str]:
    return (Kind.IMAGE, image_id)


def cache(record_id: str) -> tuple[Kind, str]:
    return (Kind.BUILD_CACHE, record_id)




def test_a_layer_held_by_a_cache_record_does_not_count_as_the_images_unique_part() -> None:
    # Truth: layer x (10) is held by A and the cache record R; layer y (20) by A and the
    # image U, which has no layer detail. Deleting A alone frees nothing.
    # The engine: A size 30, shared 20 (y), so its unique figure is 10: the record-held x,
    # already a holding of A and R, so nothing of A's is its alone.
    shot = snapshot(
        [image("A", layer_list=layers(("x", 10), ("y", 20)), shared_size=20),
         image("U", size=20, shared_size=20)],
        build_cache=[record("R", shared=True, size=10)],
    )
    ledger = LayerLedger(shot)
    assert ledger.record_layer == {"R": "x"}
    assert ledger.freed([img("A")]).total == 0
    # Deleting A and R frees x only (y stays with U); x fits U's shared size too, so the ledger
    # cannot tell it apart from y and promises nothing. Deleting all three frees both.
    assert ledger.freed([img("A"), cache("R")]).total <= 10
    assert ledger.freed([img("A"), cache("R"), img("U")]).total == 30


def test_a_layer_of_several_detailed_images_that_an_image_without_detail_shares_stays() -> None:
    # Truth: base (50) is held by d1, d2 and the opaque image. Deleting d1 and d2 frees their
    # own layers only, 5 + 6: the opaque image counts among the holders of base.
    shot = snapshot(
        [image("d1", layer_list=layers(("base", 50), ("one", 5)), shared_size=50),
         image("d2", layer_list=layers(("base", 50), ("two", 6)), shared_size=50),
         image("opaque", size=57, shared_size=50)],
        layers_size=50 + 5 + 6 + 7,
    )
    assert LayerLedger(shot).freed([img("d1"), img("d2")]).total == 11


def test_a_detailed_image_whose_shared_size_is_unknown_is_not_exempt_from_the_cap() -> None:
    # Truth: base (50) is held by A and the opaque image; deleting A frees its 5 alone.
    # A's shared size is unknown (-1): nothing of it is known to be its alone.
    shot = snapshot(
        [image("A", layer_list=layers(("base", 50), ("own", 5)), shared_size=-1),
         image("opaque", size=57, shared_size=50)],
    )
    assert LayerLedger(shot).freed([img("A")]).total <= 5


def test_an_image_without_detail_listed_twice_holds_its_unique_part_once() -> None:
    opaque = image("U", size=57, shared_size=50)
    assert LayerLedger(snapshot([opaque, opaque])).freed([img("U")]).total == 7
    # Listed once with detail and once without: the first listing counts, once.
    detailed = image("U", layer_list=layers(("base", 50), ("own", 7)), shared_size=0)
    assert LayerLedger(snapshot([detailed, opaque])).freed([img("U")]).total == 57
    assert LayerLedger(snapshot([opaque, detailed])).freed([img("U")]).total == 7


# -- the oracle, on random worlds -------------------------------------------------------------


def _world(rng: random.Random, *, hide: float, one_detailed_per_layer: bool, cached: float = 0.0):
    """A random truth and the snapshot the engine would give of it (distinct layer sizes, so
    a record's size names its layer); each layer has a BuildKit record holding it too with
    probability ``cached``."""
    count = rng.randint(1, 6)
    sizes = rng.sample(range(1, 100), count)
    members = {f"i{n}": sorted(rng.sample(range(count), rng.randint(1, count))) for n in range(rng.randint(1, 6))}
    hidden = {i for i in members if rng.random() < hide}
    if one_detailed_per_layer:
        seen: set[int] = set()
        for i in sorted(members):
            if i not in hidden:
                members[i] = [x for x in members[i] if x not in seen]
                seen |= set(members[i])
        members = {i: ls for i, ls in members.items() if ls}
    refs: dict[int, int] = defaultdict(int)
    for ls in members.values():
        for x in ls:
            refs[x] += 1
    images = []
    for i, ls in members.items():
        images.append(Image(
            id=i, repo_tags=(), created=None, last_tag_time=None, size=sum(sizes[x] for x in ls),
            shared_size=sum(sizes[x] for x in ls if refs[x] > 1), labels={}, parent_id="",
            layers=() if i in hidden else tuple(Layer(f"L{x}", sizes[x]) for x in ls)))
    rng.shuffle(images)
    holders = {x: (sizes[x], {img(i) for i, ls in members.items() if x in ls}) for x in refs}
    records = []
    for x in sorted(refs):
        if rng.random() < cached:
            records.append(record(f"R{x}", shared=True, size=sizes[x]))
            holders[x][1].add(cache(f"R{x}"))
    shot = Snapshot(taken_at=NOW, images=tuple(images), containers=(), build_cache=tuple(records), volumes=(),
                    layers_size=sum(sizes[x] for x in refs))
    return shot, holders, hidden


def _truth(holders, deletions) -> int:
    going = set(deletions)
    return sum(size for size, who in holders.values() if who <= going)


def _every_subset(keys: list, rng: random.Random):
    """Every subset of the keys, each in a random order."""
    for n in range(len(keys) + 1):
        for subset in itertools.combinations(keys, n):
            order = list(subset)
            rng.shuffle(order)
            yield order


@pytest.mark.parametrize("seed", range(300))
def test_the_cap_never_over_predicts_when_hidden_sharing_touches_only_an_images_own_layers(seed: int) -> None:
    rng = random.Random(seed)
    shot, holders, hidden = _world(rng, hide=0.35, one_detailed_per_layer=True)
    ledger = LayerLedger(shot)
    keys = [img(i.id) for i in shot.images]
    for order in _every_subset(keys, rng):
        freed = ledger.freed(order)
        assert all(v >= 0 for v in freed.by_object.values())
        assert freed.total <= _truth(holders, order)
    # Nothing of a detailed layer is lost: deleting everything frees each one (at most 32
    # images without detail), and each undetailed image's unique part; only bytes undetailed
    # images share among themselves alone are never predicted.
    detailed = {layer.chain_id: layer.size for i in shot.images for layer in i.layers}
    unique = sum(i.size - i.shared_size for i in shot.images if not i.layers)
    assert ledger.freed(keys).total == sum(detailed.values()) + unique


@pytest.mark.parametrize("seed", range(300))
def test_with_every_image_detailed_the_ledger_is_exact(seed: int) -> None:
    rng = random.Random(seed)
    shot, holders, _ = _world(rng, hide=0.0, one_detailed_per_layer=False)
    ledger = LayerLedger(shot)
    keys = [img(i.id) for i in shot.images]
    for order in _every_subset(keys, rng):
        assert ledger.freed(order).total == _truth(holders, order)


def test_shared_size_above_size_and_layers_above_size_only_move_bytes_into_the_shared_holding() -> None:
    for detailed in (image("A", layer_list=layers(("base", 50), ("own", 5)), shared_size=80),
                     image("A", layer_list=layers(("base", 50), ("own", 5)), size=30, shared_size=0)):
        ledger = LayerLedger(snapshot([detailed, image("U", size=57, shared_size=50)]))
        alone = ledger.freed([img("A")]).total
        assert alone == max(detailed.size - detailed.shared_size, 0)
        assert ledger.freed([img("U"), img("A")]).total == 55 + 7  # nothing lost, nothing doubled
        assert ledger.freed([img("A"), img("U")]).by_object[img("U")] == 7 + 55 - alone  # last to go


def test_a_detailed_image_listed_twice_is_capped_once() -> None:
    detailed = image("A", layer_list=layers(("base", 50), ("own", 5)), shared_size=50)
    ledger = LayerLedger(snapshot([detailed, detailed, image("U", size=57, shared_size=50)]))
    assert ledger.freed([img("A")]).total == 5
    assert ledger.freed([img("A"), img("U")]).total == 62


@pytest.mark.parametrize("seed", range(400))
def test_no_deletion_is_ever_promised_more_than_it_frees_whoever_shares_what(seed: int) -> None:
    # The general case: layers shared among detailed images, images without detail, and
    # build cache, in any mix; any set of deletions in any order.
    rng = random.Random(seed)
    shot, holders, _ = _world(rng, hide=0.4, one_detailed_per_layer=False, cached=0.3)
    ledger = LayerLedger(shot)
    keys = [img(i.id) for i in shot.images] + [cache(r.id) for r in shot.build_cache]
    for _ in range(40):
        subset = [k for k in keys if rng.random() < 0.6]
        rng.shuffle(subset)
        freed = ledger.freed(subset)
        assert all(v >= 0 for v in freed.by_object.values())
        assert freed.total <= _truth(holders, subset), (subset, freed)
        # What is "held by cache" is freed once the cache goes too.
        with_cache = subset + [k for k in keys if k[0] is Kind.BUILD_CACHE and k not in subset]
        assert freed.total + freed.total_held_by_cache <= _truth(holders, with_cache)
