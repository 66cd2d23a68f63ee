"""The planner's fast paths against their plain definitions, on random snapshots.

The planner and the layer ledger take shortcuts for speed at 100,000 images: several stable
sorts instead of one on a tuple, per-depth lists, bytes one object holds alone summed per
object, a scan that stops at the first image that stays. Each test here re-derives what the
shortcut must equal in the plainest way (one sort on the documented key; every layer as a
holding with all its holders) and checks that the result is exactly that, in value and order.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparkjoy.model import Kind, Snapshot
from sparkjoy.planner import Decision, plan
from sparkjoy.units import format_duration
from sparkjoy.usage import Freed, LayerLedger, ObjectKey

from sparkjoy.policy import Policy

from .builders import NOW, snapshot
from .builders import record as cache_record
from .test_planner_properties import object_keys, policies, snapshots

SETTINGS = settings(
    max_examples=600,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def depths(parent_of: dict[str, str]) -> dict[str, int]:
    """Given id -> parent id, return id -> how many listed ancestors it has (a loop: its steps)."""
    result = {}
    for start in parent_of:
        steps, seen, current = 0, {start}, parent_of[start]
        while current and current in parent_of and current not in seen:
            steps += 1
            seen.add(current)
            current = parent_of[current]
        result[start] = steps
    return result


@SETTINGS
@given(snapshots(), policies())
def test_images_and_records_come_in_the_order_of_their_documented_sort_key(generated, policy) -> None:
    snap, memory = generated
    result = plan(snap, policy, memory, now=NOW)

    images = result.by_kind(Kind.IMAGE)
    image_depth = depths({i.id: i.parent_id for i in snap.images})
    ageless = datetime.min.replace(tzinfo=NOW.tzinfo)
    assert list(images) == sorted(images, key=lambda o: (-image_depth[o.id], o.reference_time or ageless, o.id))

    records = result.by_kind(Kind.BUILD_CACHE)
    record_depth = depths({r.id: r.parent for r in snap.build_cache})
    assert [o.id for o in records] == sorted({r.id for r in snap.build_cache}, key=lambda i: (-record_depth[i], i))


def plain_freed(snap: Snapshot, ledger: LayerLedger, deletions: list[ObjectKey]) -> Freed:
    """Every byte as a holding with all its holders, walked one by one (the ledger's definition)."""
    limit = 32  # usage._UNSEEN_HOLDERS_LIMIT: past it, the holding is held by something that never goes
    never = (Kind.VOLUME, "\0never deleted")
    images = list({i.id: i for i in reversed(snap.images)}.values())[::-1]  # each id once, as first listed
    unseen = [((Kind.IMAGE, i.id), i.shared_size) for i in images if not i.layers and i.shared_size != 0]
    holdings: list[tuple[int, list[ObjectKey]]] = []
    layer_size: dict[str, int] = {}
    layer_holders: dict[str, list[ObjectKey]] = {}
    opaque: dict[ObjectKey, int] = {}
    for image in images:
        key = (Kind.IMAGE, image.id)
        for layer in image.layers:
            layer_size.setdefault(layer.chain_id, layer.size)
            holders = layer_holders.setdefault(layer.chain_id, [])
            if key not in holders:
                holders.append(key)
        if not image.layers and image.shared_size >= 0 and image.size > image.shared_size:
            opaque[key] = image.size - image.shared_size
    for record in snap.build_cache:
        for chain_id in ledger.record_chains(record.id):
            if (Kind.BUILD_CACHE, record.id) not in layer_holders[chain_id]:
                layer_holders[chain_id].append((Kind.BUILD_CACHE, record.id))
        if record.size > 0 and not record.shared:
            holdings.append((record.size, [(Kind.BUILD_CACHE, record.id)]))
    # A shared layer may be held by images without detail no smaller in shared size than it.
    alone: dict[ObjectKey, int] = {}
    with_cache: dict[ObjectKey, int] = {}
    for chain, holders in layer_holders.items():
        size = layer_size[chain]
        if size <= 0:
            continue
        if len(holders) == 1:
            alone[holders[0]] = alone.get(holders[0], 0) + size
            continue
        hidden = [u for u, shared in unseen if shared < 0 or size <= shared]
        image_holders = [h for h in holders if h[0] is Kind.IMAGE]
        if len(image_holders) == 1:
            with_cache[image_holders[0]] = with_cache.get(image_holders[0], 0) + size
        holdings.append((size, holders + hidden if len(hidden) <= limit else holders + [never]))
    # A detailed image holds alone at most its engine unique part less what build cache holds of
    # it; the rest is held with every image without detail that shares bytes.
    for image in images:
        key = (Kind.IMAGE, image.id)
        if not image.layers:
            continue
        mine = alone.get(key, 0)
        if unseen:
            unique = image.size - image.shared_size if image.shared_size >= 0 else 0
            excess = mine - max(unique - with_cache.get(key, 0), 0)
            if excess > 0:
                mine -= excess
                others = [u for u, _ in unseen]
                holdings.append((excess, [key, *others] if len(others) <= limit else [key, never]))
        if mine:
            holdings.append((mine, [key]))
    # The unique part of an image without detail may be held by a shared record matched to no
    # layer, no larger than it.
    unmatched = [(Kind.BUILD_CACHE, r.id) for r in snap.build_cache
                 if r.shared and r.size > 0 and not ledger.record_chains(r.id)]
    sizes = {(Kind.BUILD_CACHE, r.id): r.size for r in snap.build_cache}
    for key, unique in opaque.items():
        fitting = list(dict.fromkeys(r for r in unmatched if sizes[r] <= unique))
        holdings.append((unique, [key, *fitting] if len(fitting) <= limit else [key, never]))
    holdings += [(c.size_rw, [(Kind.CONTAINER, c.id)]) for c in snap.containers if c.size_rw > 0]
    holdings += [(v.size, [(Kind.VOLUME, v.name)]) for v in snap.volumes if v.size > 0]

    position = {key: index for index, key in enumerate(deletions)}
    by_object = dict.fromkeys(deletions, 0)
    held: dict[ObjectKey, int] = {}
    for size, holders in holdings:
        staying = [h for h in holders if h not in position]
        if not staying:
            by_object[max(holders, key=position.__getitem__)] += size
        elif all(kind is Kind.BUILD_CACHE for kind, _ in staying):
            going_images = [h for h in holders if h in position and h[0] is Kind.IMAGE]
            if going_images:
                last = max(going_images, key=position.__getitem__)
                held[last] = held.get(last, 0) + size
    return Freed(by_object, held)


@SETTINGS
@given(snapshots(), st.integers(0, 2**32 - 1))
def test_the_ledger_frees_what_walking_every_holding_frees(generated, seed) -> None:
    snap, _ = generated
    rng = random.Random(seed)
    everything = object_keys(snap)
    chosen = [key for key in everything if rng.random() < 0.7]
    if chosen and rng.random() < 0.3:  # a key listed twice: its last place counts
        chosen += rng.choices(chosen, k=rng.randint(1, 3))
    rng.shuffle(chosen)
    ledger = LayerLedger(snap)
    expected = plain_freed(snap, ledger, chosen)
    freed = ledger.freed(chosen)
    assert list(freed.by_object.items()) == list(expected.by_object.items())
    assert freed.held_by_cache == expected.held_by_cache
    # The planner's form: ids kind after kind, the figures as a list in that order (each place of
    # an id listed twice its whole figure), bytes held by cache by image id.
    by_kind = [(kind, [object_id for k, object_id in chosen if k is kind]) for kind in Kind]
    in_kind_order = [(kind, object_id) for kind, ids in by_kind for object_id in ids]
    expected = plain_freed(snap, ledger, in_kind_order)
    in_order, held = ledger.freed_in_order(by_kind)
    assert in_order == [expected.by_object[key] for key in in_kind_order]
    assert {(Kind.IMAGE, image_id): size for image_id, size in held.items()} == expected.held_by_cache
    # What each object holds alone: what deleting it alone frees, and only objects holding something.
    alone = {key: plain_freed(snap, ledger, [key]).by_object[key] for key in everything}
    assert ledger.unique_bytes() == {key: size for key, size in alone.items() if size}


@SETTINGS
@given(snapshots(), policies())
def test_each_deletion_carries_the_bytes_the_ledger_gives_it_in_the_plan_order(generated, policy) -> None:
    snap, memory = generated
    result = plan(snap, policy, memory, now=NOW)
    freed = LayerLedger(snap).freed([o.key for o in result.deletions])
    for o in result.objects:
        if o.decision is Decision.DELETE:
            assert (o.bytes, o.bytes_held_by_cache) == (freed.by_object[o.key], freed.held_by_cache.get(o.key, 0))
        assert o.in_scope == (not o.reason.startswith("out of scope"))
        # Reasons the age decides are shared between objects of the same hour: each still says its own age.
        if o.reason.startswith(("old:", "unused:", "stopped:", "recent:")) and o.reference_time <= NOW:
            assert f" {format_duration(NOW - o.reference_time)} ago, " in o.reason, o
        assert type(o).__name__ == "PlannedObject"


@settings(max_examples=2000, deadline=None)
@given(st.timedeltas(min_value=timedelta(days=1), max_value=timedelta(days=9_999, hours=23, minutes=59)))
def test_an_age_of_days_is_worded_by_its_days_and_hours_alone(age) -> None:
    # The planner words the reason of an age of days once per (days, hours) and shares it
    # (planner.decide_by_age): this must hold for every age between 1 and 10,000 days.
    assert format_duration(age) == format_duration(timedelta(days=age.days, hours=age.seconds // 3600))


@st.composite
def tangled_cache(draw):
    """Build-cache records whose parents point anywhere: later in the listing, at themselves, in
    loops, at records not listed; some records listed twice, one sometimes with an empty id (the
    engine should not, but may)."""
    count = draw(st.integers(1, 12))
    ids = [f"r{i}" for i in range(count)]
    if draw(st.booleans()):  # a record whose id the engine left empty: still no one's parent by ""
        ids[0] = ""
    listed = []
    for record_id in ids + draw(st.lists(st.sampled_from(ids), max_size=3)):
        parent = draw(st.sampled_from(["", "gone", *ids]))
        days = draw(st.integers(0, 20))
        listed.append(cache_record(record_id, parent=parent, last_used=NOW - timedelta(days=days, hours=1),
                             in_use=draw(st.booleans()) and draw(st.booleans()), size=draw(st.integers(0, 9))))
    order = draw(st.permutations(listed))
    return snapshot(build_cache=order)


@settings(max_examples=400, deadline=None)
@given(tangled_cache(), st.integers(0, 20))
def test_build_cache_in_any_tangle_is_ordered_by_depth_and_keeps_parents_of_what_stays(snap, max_days) -> None:
    result = plan(snap, Policy(max_age=timedelta(days=max_days)), now=NOW)
    records = {r.id: r for r in snap.build_cache}  # a record listed twice: its last listing counts
    record_depth = depths({r.id: r.parent for r in records.values()})
    planned = result.by_kind(Kind.BUILD_CACHE)
    assert [o.id for o in planned] == sorted(records, key=lambda i: (-record_depth[i], i))

    # Plainly: a record goes when it is old and not in use, and no record below it stays.
    old = {i for i, r in records.items() if not r.in_use and NOW - r.last_used > timedelta(days=max_days)}
    going = set(old)
    changed = True
    while changed:
        changed = False
        for record_id, r in records.items():
            if record_id not in going and r.parent and r.parent in going and r.parent != record_id:
                going.discard(r.parent)
                changed = True
    assert {o.id for o in planned if o.decision is Decision.DELETE} == going
    for o in planned:
        if o.decision is Decision.KEEP and o.id in old:
            assert o.reason == "parent of a cache record that stays"


@SETTINGS
@given(snapshots(), policies(), st.integers(0, 2**32 - 1))
def test_an_image_listed_twice_is_decided_once_and_every_listing_says_so(generated, policy, seed) -> None:
    snap, memory = generated
    if not snap.images:
        return
    rng = random.Random(seed)
    images = list(snap.images)
    again = rng.sample(images, rng.randint(1, len(images)))
    for image in again:  # a later listing of the same image, somewhere after the first
        images.insert(rng.randint(images.index(image) + 1, len(images)), image)
    twice = plan(replace(snap, images=tuple(images)), policy, memory, now=NOW)
    once = plan(snap, policy, memory, now=NOW)
    decided = {o.id: (o.decision, o.reason, o.reference_time) for o in once.by_kind(Kind.IMAGE)}
    listings = twice.by_kind(Kind.IMAGE)
    assert len(listings) == len(images)
    for o in listings:
        assert (o.decision, o.reason, o.reference_time) == decided[o.id]
