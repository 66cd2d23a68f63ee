"""The planner's invariants, checked with hypothesis on random snapshots and policies.

Each property re-derives what it checks from the snapshot and the policy by itself (not by
asking the planner's helpers), so a planner that breaks a rule fails here.

``EXAMPLES`` says how many random examples each property checks in the normal run;
docs/reliability.md quotes ``TOTAL_EXAMPLES``.
"""

from __future__ import annotations

import fnmatch
import random
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparkjoy.model import (
    BuildCacheRecord,
    Container,
    ContainerState,
    Image,
    Kind,
    Layer,
    Snapshot,
    Volume,
    repository_of,
)
from sparkjoy.planner import Decision, Memory, Plan, plan
from sparkjoy.policy import LabelSelector, Policy, VolumeMode
from sparkjoy.usage import LayerLedger, engine_usage

from .builders import NOW, anonymous_name

EXAMPLES = {
    "nothing_protected_is_deleted": 3500,
    "deletion_order_respects_the_graphs": 2000,
    "predicted_bytes_are_bounded": 2000,
    "planning_is_deterministic_and_complete": 1500,
    "freeing_more_never_frees_less": 1000,
}
TOTAL_EXAMPLES = sum(EXAMPLES.values())


def _settings(name: str) -> settings:
    return settings(
        max_examples=EXAMPLES[name],
        deadline=None,
        derandomize=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- strategies ------------------------------------------------------------------------
#
# Hypothesis draws the shape (how many objects of each kind) and a seed; the seed drives a
# plain random generator for the details. Drawing every detail through hypothesis costs
# ~50 ms an example (hundreds of draws); this costs ~1 ms, which is what lets the suite
# check over ten thousand examples in well under a minute. A failure prints the shape and
# the seed, which reproduce it exactly.

REPOSITORIES = ["app", "web", "reg:5000/app", "p1/api", "p2/api"]
TAG_NAMES = ["1", "2", "latest", "old"]
LABEL_CHOICES = {"project": ["p1", "p2"], "team": ["x", ""]}
# A small set of sizes so that cache records and layers of equal size meet often.
COMMON_SIZES = [0, 1, 100, 1000, 5000, 10**6]
# Hours before NOW; negative is in the future (clock skew). Few values, so ties and the
# 6h / 48h limits are crossed often.
HOURS = [-2, 0, 1, 5, 6, 7, 47, 48, 49, 1000]


def _size(rng: random.Random) -> int:
    return rng.choice(COMMON_SIZES) if rng.random() < 0.7 else rng.randint(0, 10**9)


def _time(rng: random.Random) -> datetime | None:
    if rng.random() < 1 / 6:
        return None
    return NOW - timedelta(hours=rng.choice(HOURS), seconds=rng.choice([0, 0, 1, 59]))


def _labels(rng: random.Random) -> dict[str, str]:
    return {key: rng.choice(values) for key, values in LABEL_CHOICES.items() if rng.random() < 0.5}


def build_snapshot(
    image_count: int, container_count: int, record_count: int, volume_count: int, seed: int
) -> tuple[Snapshot, Memory]:
    """Given how many objects of each kind and a seed, return a consistent random snapshot and memory."""
    rng = random.Random(seed)
    counter = iter(range(10**6))
    layer_sizes: dict[str, int] = {}

    def new_layers(below: tuple[str, ...], count: int) -> tuple[str, ...]:
        chains = list(below)
        for _ in range(count):
            chain = f"{chains[-1] if chains else ''}/L{next(counter)}"
            layer_sizes[chain] = _size(rng)
            chains.append(chain)
        return tuple(chains)

    # -- images: classic parent chains, and BuildKit-style shared bases without a parent id.
    images_raw: list[dict] = []
    used_tags: set[str] = set()
    for index in range(image_count):
        if index and rng.random() < 0.4:
            parent = images_raw[rng.randrange(index)]
            chains = new_layers(parent["chains"], rng.randint(0, 1))  # 0: a label-only child
            parent_id = parent["id"] if rng.random() < 0.75 else ""
        else:
            base = ()
            if index and rng.random() < 0.5:
                base = images_raw[rng.randrange(index)]["chains"][: rng.randint(0, 3)]
            chains = new_layers(tuple(base), rng.randint(0 if base else 1, 2))
            # Sometimes a parent the engine no longer lists (deleted by hand).
            parent_id = "sha256:gone-parent" if rng.random() < 0.05 else ""
        tags = []
        for _ in range(rng.randint(0, 3)):
            tag = f"{rng.choice(REPOSITORIES)}:{rng.choice(TAG_NAMES)}"
            if tag not in used_tags:
                used_tags.add(tag)
                tags.append(tag)
        images_raw.append(
            {
                "id": f"sha256:i{index}",
                "chains": chains,
                "parent_id": parent_id,
                "tags": tuple(tags),
                "labels": _labels(rng),
                "tagged": _time(rng),
                "created": _time(rng),
                "detail": rng.random() < 0.8,
            }
        )
    holders: dict[str, int] = defaultdict(int)
    for raw in images_raw:
        for chain in raw["chains"]:
            holders[chain] += 1
    images = []
    for raw in images_raw:
        images.append(
            Image(
                id=raw["id"],
                repo_tags=raw["tags"],
                created=raw["created"],
                last_tag_time=raw["tagged"],
                size=sum(layer_sizes[c] for c in raw["chains"]),
                # The engine's SharedSize, or -1 when it did not compute it (then, without
                # layer detail, nothing tells which of the image's bytes are its own).
                shared_size=sum(layer_sizes[c] for c in raw["chains"] if holders[c] > 1)
                if raw["detail"] or rng.random() < 0.8
                else -1,
                labels=raw["labels"],
                parent_id=raw["parent_id"],
                layers=tuple(Layer(c, layer_sizes[c]) for c in raw["chains"]) if raw["detail"] else (),
            )
        )
    image_ids = [i.id for i in images]

    # -- volumes (names first: containers mount them)
    volume_names = [anonymous_name(f"v{i}") if rng.random() < 0.5 else f"named-{i}" for i in range(volume_count)]

    # -- containers in every state, pointing at images (or at an image already gone)
    containers = []
    for index in range(container_count):
        containers.append(
            Container(
                id=f"c{index}",
                names=(f"name{index}",),
                image_id=rng.choice(image_ids + ["sha256:gone"]),
                image_ref="",
                state=rng.choice(list(ContainerState)),
                created=_time(rng),
                finished=_time(rng),
                size_rw=rng.choice([-1, 0, 10, 4096]),
                labels=_labels(rng),
                volumes=tuple(rng.sample(volume_names, rng.randint(0, min(2, len(volume_names))))),
            )
        )

    volumes = []
    for name in volume_names:
        users = sum(1 for c in containers if name in c.volumes)
        volumes.append(
            Volume(
                name=name,
                driver="local",
                created=_time(rng),
                size=rng.choice([-1, 0, 10, 10**6]),
                # Mostly the truth; sometimes unknown (-1) or counting a container we cannot see.
                ref_count=rng.choice([users, users, -1, users + 1]),
                labels=_labels(rng),
            )
        )

    # -- build cache: parents, in use or not, shared or not, sizes that often match a layer
    records = []
    layer_size_pool = sorted(set(layer_sizes.values())) or [0]
    for index in range(record_count):
        shared = rng.random() < 0.5
        size = rng.choice(layer_size_pool) if shared and rng.random() < 0.75 else _size(rng)
        records.append(
            BuildCacheRecord(
                id=f"r{index}",
                parent=f"r{rng.randrange(index)}" if index and rng.random() < 0.5 else rng.choice(["", "", "gone"]),
                type=rng.choice(["regular", "source.local", "exec.cachemount"]),
                description="",
                in_use=rng.random() < 0.5,
                shared=shared,
                size=size,
                created=_time(rng),
                last_used=_time(rng),
                usage_count=1,
            )
        )

    snap = Snapshot(
        taken_at=NOW,
        images=tuple(images),
        containers=tuple(containers),
        build_cache=tuple(records),
        volumes=tuple(volumes),
        # The engine's LayersSize: every distinct layer once.
        layers_size=sum(layer_sizes[chain] for chain in holders),
    )
    memory = Memory(
        last_used={i: t for i in image_ids if rng.random() < 0.5 and (t := _time(rng)) is not None},
        first_seen={i: t for i in image_ids if rng.random() < 0.5 and (t := _time(rng)) is not None},
    )
    return snap, memory


def object_keys(snap: Snapshot) -> list[tuple[Kind, str]]:
    """Given a snapshot, return the key of every object in it, kind by kind in listing order."""
    return (
        [(Kind.CONTAINER, c.id) for c in snap.containers]
        + [(Kind.IMAGE, i.id) for i in snap.images]
        + [(Kind.BUILD_CACHE, r.id) for r in snap.build_cache]
        + [(Kind.VOLUME, v.name) for v in snap.volumes]
    )


def snapshots() -> st.SearchStrategy[tuple[Snapshot, Memory]]:
    return st.builds(
        build_snapshot,
        image_count=st.integers(0, 8),
        container_count=st.integers(0, 6),
        record_count=st.integers(0, 6),
        volume_count=st.integers(0, 4),
        seed=st.integers(0, 2**32 - 1),
    )


def build_policy(seed: int) -> Policy:
    """Given a seed, return a random valid policy (a scope one time in three)."""
    rng = random.Random(seed)

    def some(choices: list, most: int = 2) -> tuple:
        return tuple(rng.sample(choices, rng.randint(0, most)))

    return Policy(
        max_age=rng.choice([timedelta(seconds=-1), timedelta(0), timedelta(hours=6), timedelta(hours=48)]),
        keep_recent=rng.randint(0, 3),
        labels=some([LabelSelector("project", "p1"), LabelSelector("team"), LabelSelector("project")])
        if rng.random() < 1 / 3
        else (),
        repos=some(["app", "p1/*", "reg:5000/*", "w*"]) if rng.random() < 1 / 3 else (),
        exclude=some(["app:old", "*:latest", "web:*"]),
        containers=rng.random() < 0.5,
        images=rng.random() < 0.8,
        build_cache=rng.random() < 0.8,
        volumes=rng.choice(list(VolumeMode)),
    )


def policies() -> st.SearchStrategy[Policy]:
    return st.builds(build_policy, st.integers(0, 2**32 - 1))


# -- independent re-derivations of the rules ------------------------------------------------


def is_old(policy: Policy, when: datetime) -> bool:
    return policy.max_age < timedelta(0) or NOW - when > policy.max_age


def labels_match(policy: Policy, labels) -> bool:
    return all(
        s.key in labels and (s.value is None or labels[s.key] == s.value) for s in policy.labels
    )


def image_in_scope(policy: Policy, image: Image) -> bool:
    if not labels_match(policy, image.labels):
        return False
    if policy.repos:
        repos = {repository_of(tag) for tag in image.repo_tags}
        return any(fnmatch.fnmatchcase(r, p) for r in repos for p in policy.repos)
    return True


def excluded(policy: Policy, image: Image) -> bool:
    return any(fnmatch.fnmatchcase(tag, p) for tag in image.repo_tags for p in policy.exclude)


def reference_time(image: Image, memory: Memory) -> datetime | None:
    known = [t for t in (image.last_tag_time, memory.last_used.get(image.id)) if t is not None]
    if known:
        return max(known)
    return memory.first_seen.get(image.id)


def container_time(container: Container) -> datetime | None:
    return container.created if container.state is ContainerState.CREATED else container.finished


def keep_recent_winners(snap: Snapshot, policy: Policy, memory: Memory, staying_containers: set[str]) -> set[str]:
    """Given everything, return the ids keep-recent must keep: the N newest old candidates per repository."""
    pinned = {c.image_id for c in snap.containers if c.id in staying_containers}
    by_repository: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    for image in snap.images:
        when = reference_time(image, memory)
        if (
            policy.images
            and image_in_scope(policy, image)
            and not excluded(policy, image)
            and image.id not in pinned
            and when is not None
            and is_old(policy, when)
        ):
            for repository in {repository_of(tag) for tag in image.repo_tags}:
                by_repository[repository].append((when, image.id))
    winners = set()
    for members in by_repository.values():
        members.sort(reverse=True)
        winners |= {image_id for _, image_id in members[: policy.keep_recent]}
    return winners


def decisions(result: Plan) -> dict[tuple[Kind, str], Decision]:
    return {o.key: o.decision for o in result.objects}


# -- properties -----------------------------------------------------------------------------


@_settings("nothing_protected_is_deleted")
@given(snapshots(), policies())
def test_nothing_in_use_excluded_out_of_scope_young_or_kept_recent_is_ever_deleted(generated, policy) -> None:
    snap, memory = generated
    result = plan(snap, policy, memory, now=NOW)
    deleted = {o.key for o in result.deletions}
    deleted_containers = {object_id for kind, object_id in deleted if kind is Kind.CONTAINER}
    staying = {c.id for c in snap.containers} - deleted_containers

    for c in snap.containers:
        if c.id in deleted_containers:
            assert policy.containers
            assert c.state in (ContainerState.EXITED, ContainerState.DEAD, ContainerState.CREATED), c
            assert labels_match(policy, c.labels)
            if policy.repos:
                image = snap.image(c.image_id)
                tags = image.repo_tags if image else (c.image_ref,)
                repositories = {repository_of(tag) for tag in tags if tag}
                assert any(fnmatch.fnmatchcase(r, p) for r in repositories for p in policy.repos), c
            when = container_time(c)
            assert when is not None and is_old(policy, when), c

    in_use_images = {c.image_id for c in snap.containers if c.id in staying}
    winners = keep_recent_winners(snap, policy, memory, staying)
    for image in snap.images:
        if (Kind.IMAGE, image.id) not in deleted:
            continue
        assert policy.images
        assert image.id not in in_use_images, f"{image.id} is used by a container that stays"
        assert not excluded(policy, image), image.repo_tags
        assert image_in_scope(policy, image), image
        when = reference_time(image, memory)
        assert when is not None and is_old(policy, when), (when, image)
        assert image.id not in winners, f"{image.id} is among the newest kept by keep-recent"

    ledger = LayerLedger(snap)
    for r in snap.build_cache:
        if (Kind.BUILD_CACHE, r.id) not in deleted:
            continue
        assert policy.build_cache and not r.in_use
        when = r.last_used or r.created
        assert when is not None and is_old(policy, when)
        if policy.labels or policy.repos:
            # In scope only through a layer every one of whose images is in scope.
            assert r.shared
            chains = ledger.record_chains(r.id)
            assert chains, f"record {r.id} is attributable to no image"
            holding = {i.id for i in snap.images for layer in i.layers if layer.chain_id in chains}
            assert holding and all(image_in_scope(policy, snap.image(i)) for i in holding)

    for v in snap.volumes:
        if (Kind.VOLUME, v.name) not in deleted:
            continue
        assert policy.volumes is not VolumeMode.NONE and not policy.repos
        assert labels_match(policy, v.labels)
        assert not any(v.name in c.volumes for c in snap.containers if c.id in staying)
        assert v.ref_count == sum(1 for c in snap.containers if c.id in deleted_containers and v.name in c.volumes)
        if policy.volumes is VolumeMode.ANONYMOUS:
            assert v.anonymous
        assert v.created is not None and is_old(policy, v.created)


@_settings("deletion_order_respects_the_graphs")
@given(snapshots(), policies())
def test_children_go_before_parents_and_parents_of_kept_objects_stay(generated, policy) -> None:
    snap, memory = generated
    result = plan(snap, policy, memory, now=NOW)
    order = [o.key for o in result.deletions]
    position = {key: index for index, key in enumerate(order)}
    state = decisions(result)

    # Kinds in the documented order: containers, images, build cache, volumes.
    rank = {Kind.CONTAINER: 0, Kind.IMAGE: 1, Kind.BUILD_CACHE: 2, Kind.VOLUME: 3}
    assert [rank[kind] for kind, _ in order] == sorted(rank[kind] for kind, _ in order)

    for image in snap.images:
        parent = (Kind.IMAGE, image.parent_id)
        if not image.parent_id or parent not in state:
            continue
        if state[(Kind.IMAGE, image.id)] is Decision.KEEP:
            assert state[parent] is Decision.KEEP, f"parent {image.parent_id} of kept {image.id} is deleted"
        elif parent in position:
            assert position[(Kind.IMAGE, image.id)] < position[parent], "a child must go before its parent"

    for r in snap.build_cache:
        parent = (Kind.BUILD_CACHE, r.parent)
        if not r.parent or parent not in state:
            continue
        if state[(Kind.BUILD_CACHE, r.id)] is Decision.KEEP:
            assert state[parent] is Decision.KEEP, f"parent record {r.parent} of kept {r.id} is deleted"
        elif parent in position:
            assert position[(Kind.BUILD_CACHE, r.id)] < position[parent]


@_settings("predicted_bytes_are_bounded")
@given(snapshots(), policies())
def test_predicted_bytes_are_never_negative_nor_above_what_the_engine_uses(generated, policy) -> None:
    snap, memory = generated
    result = plan(snap, policy, memory, now=NOW)
    total = engine_usage(snap)
    for o in result.objects:
        assert 0 <= o.bytes <= total, o
        assert 0 <= o.bytes_held_by_cache <= total, o
        if o.decision is Decision.KEEP:
            assert o.bytes == 0 and o.bytes_held_by_cache == 0, o
    assert 0 <= result.predicted_bytes <= total
    # Freed now and held by cache are disjoint bytes: together still within the total.
    assert result.predicted_bytes + result.held_by_cache_bytes <= total


@_settings("planning_is_deterministic_and_complete")
@given(snapshots(), policies(), st.integers(0, 2**32 - 1))
def test_planning_twice_or_in_another_listing_order_gives_the_same_plan(generated, policy, shuffle_seed) -> None:
    snap, memory = generated
    rng = random.Random(shuffle_seed)
    first = plan(snap, policy, memory, now=NOW)
    second = plan(snap, policy, memory, now=NOW)
    assert first == second

    # The plan lists every object of the snapshot exactly once.
    keys = [o.key for o in first.objects]
    expected = (
        [(Kind.CONTAINER, c.id) for c in snap.containers]
        + [(Kind.IMAGE, i.id) for i in snap.images]
        + [(Kind.BUILD_CACHE, r.id) for r in snap.build_cache]
        + [(Kind.VOLUME, v.name) for v in snap.volumes]
    )
    assert sorted(keys) == sorted(expected)
    assert len(keys) == len(set(keys))

    # The engine lists objects in no promised order: decisions, order and bytes must not depend on it.
    def shuffled(items):
        items = list(items)
        rng.shuffle(items)
        return tuple(items)

    reordered = replace(
        snap,
        images=shuffled(snap.images),
        containers=shuffled(snap.containers),
        build_cache=shuffled(snap.build_cache),
        volumes=shuffled(snap.volumes),
    )
    other = plan(reordered, policy, memory, now=NOW)
    assert [(o.key, o.decision, o.bytes, o.bytes_held_by_cache) for o in other.objects] == [
        (o.key, o.decision, o.bytes, o.bytes_held_by_cache) for o in first.objects
    ]


@_settings("freeing_more_never_frees_less")
@given(snapshots(), st.integers(0, 2**32 - 1))
def test_deleting_more_objects_never_frees_fewer_bytes_whatever_the_order(generated, subset_seed) -> None:
    snap, _ = generated
    rng = random.Random(subset_seed)
    everything = object_keys(snap)
    smaller = [key for key in everything if rng.random() < 0.5]
    larger = smaller + [key for key in everything if key not in smaller and rng.random() < 0.5]
    ledger = LayerLedger(snap)
    total = engine_usage(snap)
    small, large = ledger.freed(smaller), ledger.freed(larger)
    assert 0 <= small.total <= large.total <= total
    rng.shuffle(larger)
    assert ledger.freed(larger).total == large.total, "the total freed must not depend on the order"
    assert all(value >= 0 for value in large.by_object.values())
