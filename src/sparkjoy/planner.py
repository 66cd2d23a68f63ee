"""The planner: snapshot + policy + remembered use + now -> a plan with a reason per object.

Pure: no engine calls, no clock, no printing. The same inputs always give the same plan.

Order of deletion (the executor follows it): stopped containers first, so they stop
pinning their images; then images, children before parents; then build-cache records,
children before parents; then volumes.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from itertools import count, takewhile
from operator import attrgetter
from typing import Iterable, Mapping

from .model import BuildCacheRecord, Container, ContainerState, Image, Kind, Snapshot, Volume, repository_of
from .policy import Policy, VolumeMode
from .units import format_duration
from .usage import LayerLedger, ObjectKey


class Decision(str, Enum):
    DELETE = "delete"
    KEEP = "keep"


@dataclass(frozen=True, slots=True)
class PlannedObject:
    kind: Kind
    id: str
    names: tuple[str, ...]
    decision: Decision
    reason: str
    # Bytes this object's deletion is predicted to free (0 when kept).
    bytes: int = 0
    # Bytes of this image that build cache still holds: freed once that cache is pruned.
    bytes_held_by_cache: int = 0
    # The time the age was measured from, when there is one.
    reference_time: datetime | None = None
    # The object's own size as the engine reports it, for display.
    size: int = 0
    in_scope: bool = True
    # The untagged parents the engine does not list (``Image.hidden_parents``: a classic
    # build's step images, an old base whose tag moved), deleted after the image, nearest
    # first, while nothing else holds them (as `docker image prune` deletes them). Only when
    # the plan's scope is the whole engine: under --repo or --label an untagged image is out of
    # it. A listed parent is decided on its own.
    hidden_parents: tuple[str, ...] = ()

    @property
    def key(self) -> ObjectKey:
        return (self.kind, self.id)


class _Unfrozen:
    """A PlannedObject while the planner fills it in, turned into a PlannedObject by ``_freeze``.

    A frozen dataclass sets each field through ``object.__setattr__`` (about 1 µs an object,
    a third of a second on 300,000 objects); this class has the same slots, so it is built
    at plain-object speed and then becomes a PlannedObject by changing its class (Python
    allows it for identical slots). Only the planner sees it: every object in a Plan is a
    true, immutable PlannedObject.
    """

    __slots__ = PlannedObject.__slots__

    def __init__(self, kind: Kind, object_id: str, names: tuple[str, ...], decided: Decided, size: int):
        self.kind = kind
        self.id = object_id
        self.names = names
        self.decision, self.reason, self.reference_time = decided
        self.bytes = 0  # filled in for deletions once the whole plan is known
        self.bytes_held_by_cache = 0
        self.size = size if size > 0 else 0
        self.in_scope = not self.reason.startswith("out of scope")
        self.hidden_parents = ()


def _freeze(*made: Iterable[_Unfrozen]) -> None:
    # Best in the order the objects were made, which is their order in memory: in plan
    # order the same pass costs three times as much.
    for objects in made:
        for o in objects:
            o.__class__ = PlannedObject  # type: ignore[assignment]


@dataclass(frozen=True)
class Plan:
    """Every object of the snapshot with its decision; ``deletions`` in execution order."""

    objects: tuple[PlannedObject, ...]
    now: datetime
    policy: Policy
    snapshot: Snapshot = field(repr=False, compare=False)
    # The snapshot's byte ledger the planner built, kept for what a run asks after it
    # (owners_left_behind); None for a plan made by hand.
    ledger: LayerLedger | None = field(default=None, repr=False, compare=False)
    # The images that took a repository's keep-recent places where others of it go: whether
    # those others are old enough to go rests on these images' answers (see
    # executor.ranks_changed), not only on their own.
    ranked: tuple[str, ...] = ()

    @property
    def deletions(self) -> tuple[PlannedObject, ...]:
        return tuple(o for o in self.objects if o.decision is Decision.DELETE)

    @property
    def kept(self) -> tuple[PlannedObject, ...]:
        return tuple(o for o in self.objects if o.decision is Decision.KEEP)

    @property
    def predicted_bytes(self) -> int:
        return sum(o.bytes for o in self.deletions)

    @property
    def held_by_cache_bytes(self) -> int:
        return sum(o.bytes_held_by_cache for o in self.deletions)

    def by_kind(self, kind: Kind) -> tuple[PlannedObject, ...]:
        return tuple(o for o in self.objects if o.kind is kind)


@dataclass(frozen=True)
class Memory:
    """What sparkjoy remembers about images, beyond what the engine reports.

    ``last_used``: image id -> the last time a container of it was created, started or
    stopped, or it was tagged, loaded, pulled or built. ``first_seen``: image id -> when
    sparkjoy first saw it; used only when the engine gives no usable time at all.
    """

    last_used: Mapping[str, datetime] = field(default_factory=dict)
    first_seen: Mapping[str, datetime] = field(default_factory=dict)
    # build-cache record id -> the images it held layers of that a prune deleted (see CacheOwner).
    cache_owners: Mapping[str, tuple[CacheOwner, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class CacheOwner:
    """An image a build-cache record held layers of, deleted by a prune: its tags and labels.

    Under a scope a record is pruned only when every image it holds layers of is in scope.
    A scoped prune that leaves the cache (``--no-build-cache``, or a record still recent)
    deletes those images, and with them the only sign that the record is the scope's: the
    next scoped prune would find it "not attributable" and keep it for ever. So a real prune
    remembers them (``owners_left_behind``), and the planner counts them as the record's
    holders, as if they were still there.
    """

    repo_tags: tuple[str, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    # When the prune that deleted it ended: a record used after that serves someone else too.
    recorded: datetime | None = None

    def as_image(self) -> Image:
        """The image as far as a scope asks (tags and labels)."""
        return Image(id="", repo_tags=self.repo_tags, created=None, last_tag_time=None, size=0, shared_size=0,
                     labels=self.labels)


EMPTY_MEMORY = Memory()


def _used_since(record: BuildCacheRecord, owners: tuple[CacheOwner, ...]) -> bool:
    """True when a build used the record after the last of its remembered images was deleted:
    by an image that is gone too, perhaps one outside the scope."""
    times = [o.recorded for o in owners if o.recorded is not None]
    return bool(times) and record.last_used is not None and record.last_used > max(times)


def owners_left_behind(plan: Plan, deleted_images: Iterable[str],
                       when: datetime | None = None) -> dict[str, tuple[CacheOwner, ...]]:
    """Given a plan, the images its run deleted and when the run ended, return build-cache record
    id -> those of its images whose layers the record held (or may hold), for every record the
    run did not delete."""
    deleted = set(deleted_images)
    if not deleted or not plan.snapshot.build_cache:
        return {}
    images = {image.id: image for image in plan.snapshot.images}
    left = {r.id for r in plan.snapshot.build_cache} - {
        o.id for o in plan.deletions if o.kind is Kind.BUILD_CACHE}
    owners: dict[str, tuple[CacheOwner, ...]] = {}
    ledger = plan.ledger if plan.ledger is not None else LayerLedger(plan.snapshot)
    for record_id, holders in ledger.records_holding_images().items():
        gone = sorted(h for h in holders if h in deleted)
        if record_id in left and gone:
            owners[record_id] = tuple(CacheOwner(images[i].repo_tags, dict(images[i].labels), when) for i in gone)
    return owners

# What a rule decides for one object: the decision, its reason, and the reference time.
Decided = tuple[Decision, str, "datetime | None"]


class _ImageDecisions:
    """Image id -> its decision, for the rules that change decisions after the first pass.

    The decisions sit in a list by listing place, behind the planner's one dictionary of
    places (made in C): a dictionary of decisions filled image by image cost a trip to memory
    per image at 100,000 images. An image listed twice: its last listing's place.
    """

    __slots__ = ("_place", "_decided")

    def __init__(self, place: dict[str, int], decided: list[Decided]):
        self._place = place
        self._decided = decided

    def __getitem__(self, image_id: str) -> Decided:
        return self._decided[self._place[image_id]]

    def __setitem__(self, image_id: str, decided: Decided) -> None:
        self._decided[self._place[image_id]] = decided

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._place


def plan(snapshot: Snapshot, policy: Policy, memory: Memory = EMPTY_MEMORY, *, now: datetime) -> Plan:
    """Given what the engine holds, the policy, what we remember and the time, decide every object."""
    # Planning allocates several small objects per engine object and makes no reference
    # cycles; the cyclic collector would only rescan the (large) snapshot again and again,
    # a third of the time on 10,000 images. Pause it for the plan.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _Planner(snapshot, policy, memory, now).run()
    finally:
        if collecting:
            gc.enable()


class _Planner:
    def __init__(self, snapshot: Snapshot, policy: Policy, memory: Memory, now: datetime):
        self.snapshot = snapshot
        self.policy = policy
        self.memory = memory
        self.now = now
        # image id -> the place of its last listing (made in C; a listing's decision sits at its
        # place in a list, see _ImageDecisions).
        self._image_place = dict(zip(map(attrgetter("id"), snapshot.images), count()))
        self._everything_old = policy.everything_old
        self._max_age = policy.max_age
        self._scoped = policy.scoped
        # The objects of images and build-cache records in the order they were made (see _freeze).
        self._images_made: Iterable[_Unfrozen] = ()
        self._records_made: Iterable[_Unfrozen] = ()
        # Said in the reason of every object the age decides: worded once.
        self._max_age_text = (
            "negative max age: everything counts as old"
            if self._everything_old
            else f"max age {format_duration(policy.max_age)}"
        )

        # Reasons of ages of whole days, by (deleting, what, old, days, hours): see decide_by_age.
        self._day_reasons: dict[tuple[bool, str, str, int, int], str] = {}
        # The images holding keep-recent places in repositories where others go (Plan.ranked).
        self._ranked: set[str] = set()
        # Unscoped: the nearest step image of a deleted image whose chain a container that stays
        # runs on cuts (step id -> that image), for the bytes ledger (see bytes_ledger).
        self._steps_kept_by_containers: dict[str, Image] = {}

    def image_by_id(self, image_id: str) -> Image | None:
        """Given an image id, return its (last) listing, or None when it is not listed."""
        place = self._image_place.get(image_id)
        return None if place is None else self.snapshot.images[place]

    def decide_by_age(self, what: str, when: datetime, old: str) -> tuple[Decision, str, datetime]:
        """Given what happened at ``when`` (``"last used"``) and the word for old (``"unused"``),
        return the decision the age alone makes, with its reason."""
        age = self.now - when
        deleting = self._everything_old or age > self._max_age
        days = age.days
        if 0 < days < 10_000:
            # format_duration words an age of days by its days and hours alone ("12d3h"; pinned
            # by tests/unit/test_planner_equivalence.py), so objects of the same hour share one
            # reason, worded once: most ages are days, and wording each took ~0.2 s at 300,000.
            key = (deleting, what, old, days, age.seconds // 3600)
            reason = self._day_reasons.get(key)
            if reason is None:
                reason = self._day_reasons[key] = self.age_reason(deleting, what, when, old)
        else:
            reason = self.age_reason(deleting, what, when, old)
        return (Decision.DELETE if deleting else Decision.KEEP), reason, when

    def age_reason(self, deleting: bool, what: str, when: datetime, old: str) -> str:
        now = self.now
        ago = format_duration(now - when) + " ago" if when <= now else "in the future"
        if deleting:
            return f"{old}: {what} {ago}, older than {self._max_age_text}"
        return f"recent: {what} {ago}, within {self._max_age_text}"

    def run(self) -> Plan:
        containers = self.plan_containers()
        removed_containers = {o.id for o in containers if o.decision is Decision.DELETE}
        images = self.plan_images(removed_containers)
        ledger = LayerLedger(self.snapshot)
        cache = self.plan_build_cache(ledger)
        volumes = self.plan_volumes(removed_containers)

        # Every object decided first, bytes after: the bytes of a deletion depend on every
        # deletion before it. Kept objects free nothing (their bytes stay 0).
        objects = containers + images + cache + volumes
        delete, object_id = Decision.DELETE, attrgetter("id")
        deleted_by_kind = [(kind, [o for o in planned if o.decision is delete])
                           for kind, planned in ((Kind.CONTAINER, containers), (Kind.IMAGE, images),
                                                 (Kind.BUILD_CACHE, cache), (Kind.VOLUME, volumes))]
        freed_bytes, held = self.bytes_ledger(ledger).freed_in_order(
            [(kind, list(map(object_id, deleted))) for kind, deleted in deleted_by_kind])
        amounts = iter(freed_bytes)
        for _, deleted in deleted_by_kind:
            for o, o_bytes in zip(deleted, amounts):  # (deleted first: zip stops at its end, taking no more)
                o.bytes = o_bytes
        if held:  # bytes held by cache are an image's (LayerLedger.freed_in_order)
            for o in deleted_by_kind[1][1]:
                o.bytes_held_by_cache = held.get(o.id, 0)
        _freeze(containers, self._images_made, self._records_made, volumes)
        frozen: tuple[PlannedObject, ...] = tuple(objects)  # type: ignore[arg-type]
        return Plan(objects=frozen, now=self.now, policy=self.policy, snapshot=self.snapshot, ledger=ledger,
                    ranked=tuple(sorted(self._ranked)))

    def bytes_ledger(self, ledger: LayerLedger) -> LayerLedger:
        """The ledger that tells what the deletions free. Under --repo or --label an image's
        untagged parents that the engine does not list stay (``PlannedObject.hidden_parents``),
        and the nearest holds the image's bottom layers: it joins the ledger as an image no
        deletion names, so those layers are never predicted as freed. Unscoped, the same for a
        step image a container that stays runs on: no listed image holds its layers, and how
        many it has is told for the nearest step alone, so the nearest's count stands for it
        (at most: a prediction may come short, never over)."""
        with_steps = self._steps_kept_by_containers.values() if not self._scoped else self.snapshot.images
        stay: dict[str, Image] = {}
        for image in with_steps:
            held = image.hidden_parent_layers
            if held and image.layers and image.hidden_parents[0] not in stay:
                stay[image.hidden_parents[0]] = Image(image.hidden_parents[0], (), None, None, 0, 0,
                                                      layers=image.layers[:held])
        if not stay:
            return ledger
        return LayerLedger(replace(self.snapshot, images=(*self.snapshot.images, *stay.values())))

    # -- containers -------------------------------------------------------------------

    def container_scope_problem(self, container: Container) -> str | None:
        if not self.policy.labels_match(container.labels):
            return "out of scope: lacks label " + ", ".join(str(s) for s in self.policy.labels)
        if self.policy.repos:
            image = self.image_by_id(container.image_id)
            tags = image.repo_tags if image else (container.image_ref,)
            if not any(self.policy.repo_matches(repository_of(tag)) for tag in tags if tag):
                return "out of scope: its image's repository does not match --repo"
        return None

    def plan_containers(self) -> list[_Unfrozen]:
        return [
            _Unfrozen(Kind.CONTAINER, c.id, c.names, self.decide_container(c), c.size_rw)
            for c in sorted(self.snapshot.containers, key=lambda c: c.id)
        ]

    def decide_container(self, container: Container) -> tuple[Decision, str, datetime | None]:
        scope_problem = self.container_scope_problem(container)
        if scope_problem:
            return Decision.KEEP, scope_problem, None
        if not self.policy.containers:
            return Decision.KEEP, "container pruning is off", None
        if not container.state.stopped:
            return Decision.KEEP, f"in use: {container.state.value}", None
        if container.state is ContainerState.CREATED:
            when, what = container.created, "created (never started)"
        else:
            when, what = container.finished, f"{container.state.value}, finished"
        if when is None:
            return Decision.KEEP, f"{container.state.value} with no usable timestamp: age unknown", None
        return self.decide_by_age(what, when, "stopped")

    # -- images -----------------------------------------------------------------------

    def plan_images(self, removed_containers: set[str]) -> list[_Unfrozen]:
        pinned: dict[str, Container] = {}
        for container in self.snapshot.containers:
            if container.id not in removed_containers:
                pinned.setdefault(container.image_id, container)

        decided: list[Decided] = []  # by listing place
        candidates: list[tuple[Image, datetime]] = []
        # Unscoped and without exclusions (the common case), no image needs asking.
        excluding = bool(self.policy.exclude)
        pruning = self.policy.images
        reference_time = self.image_reference_time
        decide_by_age = self.decide_by_age
        for image in self.snapshot.images:
            problem = self.policy.image_in_scope(image) if self._scoped else None
            when, what = reference_time(image)
            if problem:
                decided.append((Decision.KEEP, problem, when))
            elif not pruning:
                decided.append((Decision.KEEP, "image pruning is off", when))
            elif excluding and (excluded := self.policy.excluded_by(image)) is not None:
                pattern, tag = excluded
                decided.append((Decision.KEEP, f"excluded: {tag} matches --exclude {pattern}", when))
            elif image.id in pinned:
                user = pinned[image.id]
                name = user.names[0] if user.names else user.short_id
                decided.append((Decision.KEEP, f"in use by container {name} ({user.state.value})", when))
            elif when is None:
                decided.append((Decision.KEEP, "age unknown: no last-tag time, and not seen by sparkjoy before (a real "
                                "prune or the daemon notes it now; its age counts from then)", None))
            else:
                decided.append(decision := decide_by_age(what, when, "old"))
                if decision[0] is Decision.DELETE:
                    candidates.append((image, when))

        decisions = _ImageDecisions(self._image_place, decided)
        listed_twice = len(self._image_place) != len(self.snapshot.images)
        if listed_twice:
            # An image listed twice is decided by its last listing (_ImageDecisions), and takes
            # one place in its repository's ranking, not one per listing (it took two, and the
            # next newest image went where keep-recent should have kept it).
            last = {image.id: (image, when) for image, when in candidates}
            candidates = [(image, when) for image, when in last.values() if decisions[image.id][0] is Decision.DELETE]
        self.keep_recent_per_repository(candidates, decisions)
        if self._scoped:
            self.keep_bases_of_step_images(decisions)
        self.keep_parents_of_kept(decisions)

        images = self.snapshot.images
        if listed_twice:  # every listing has the decision of the last
            decided = [decisions[i.id] for i in images]
        made = [_Unfrozen(Kind.IMAGE, i.id, i.repo_tags, d, i.size) for i, d in zip(images, decided)]
        self._images_made = made
        if not self._scoped:
            # A step image that an image which stays builds on stays too (the engine refuses it:
            # it has a child), and so does every step below it: a deletion names only those above.
            # So does one a container that stays runs on (a failed build's step, run to debug it).
            with_steps = [(image, made_one) for image, made_one in zip(self.snapshot.images, made)
                          if image.hidden_parents]
            staying = {parent for image, made_one in with_steps if made_one.decision is not Decision.DELETE
                       for parent in image.hidden_parents}
            run_on = set(pinned)
            staying |= run_on
            for image, made_one in with_steps:
                if made_one.decision is Decision.DELETE:
                    chain = image.hidden_parents
                    if staying:
                        chain = tuple(takewhile(lambda parent: parent not in staying, chain))
                        if len(chain) < len(image.hidden_parents) and image.hidden_parents[len(chain)] in run_on:
                            # No listed image holds that step's layers: they stay with it, and at
                            # most as many as the nearest step has (the ledger's stay images).
                            self._steps_kept_by_containers[image.hidden_parents[0]] = image
                    made_one.hidden_parents = chain
        # Children before parents (deepest first), then the oldest first, then by id. Three
        # stable sorts on one simple key each, the last key first: the same order as one sort
        # on the tuple (-depth, time, id), at a third of the cost (no tuple per image).
        ageless = datetime.min.replace(tzinfo=self.now.tzinfo)
        objects = sorted(made, key=attrgetter("id"))
        objects.sort(key=lambda o: o.reference_time or ageless)
        depth = self.image_depths()
        if depth:  # the images with a parent listed go first, deepest first, in the order so far
            deep: list[_Unfrozen] = []
            shallow: list[_Unfrozen] = []
            for o in objects:
                (deep if o.id in depth else shallow).append(o)
            deep.sort(key=lambda o: depth[o.id], reverse=True)  # reverse=True keeps ties in order
            objects = deep + shallow
        return objects

    def image_reference_time(self, image: Image) -> tuple[datetime | None, str]:
        last_tag = image.last_tag_time
        last_use = self.memory.last_used.get(image.id)
        if last_tag and (last_use is None or last_tag >= last_use):
            return last_tag, "last tagged"
        if last_use:
            return last_use, "last used"
        first_seen = self.memory.first_seen.get(image.id)
        if first_seen:
            return first_seen, "first seen by sparkjoy"
        return None, ""

    def keep_recent_per_repository(
        self, candidates: list[tuple[Image, datetime]], decisions: _ImageDecisions
    ) -> None:
        if self.policy.keep_recent <= 0:
            return
        by_repository: dict[str, list[tuple[Image, datetime]]] = defaultdict(list)
        for image, when in candidates:
            tags = image.repo_tags  # an untagged image is in no repository
            if len(tags) == 1:  # most tagged images: one tag, one repository
                by_repository[repository_of(tags[0])].append((image, when))
            elif tags:
                for repository in image.repositories:
                    by_repository[repository].append((image, when))
        for repository, members in sorted(by_repository.items()):
            members.sort(key=lambda pair: (pair[1], pair[0].id), reverse=True)
            if len(members) > self.policy.keep_recent:
                self._ranked.update(image.id for image, _ in members[: self.policy.keep_recent])
            for rank, (image, when) in enumerate(members[: self.policy.keep_recent], start=1):
                if decisions[image.id][0] is Decision.DELETE:
                    decisions[image.id] = (
                        Decision.KEEP,
                        f"kept recent: #{rank} newest of repository {repository} (keep-recent {self.policy.keep_recent})",
                        when,
                    )

    def keep_bases_of_step_images(self, decisions: _ImageDecisions) -> None:
        """Under --repo or --label, a deleted image's untagged step images stay (out of scope:
        see ``PlannedObject.hidden_parents``), and they are children of its listed parent: the
        engine refuses to delete that parent, after its tags but the last went by name. So the
        parent stays, whole (and, through ``keep_parents_of_kept``, its own parents)."""
        for image in self.snapshot.images:
            parent_id = image.parent_id
            if (image.hidden_parents and parent_id in decisions and decisions[parent_id][0] is Decision.DELETE
                    and decisions[image.id][0] is Decision.DELETE):
                label = image.repo_tags[0] if image.repo_tags else image.short_id
                decisions[parent_id] = (Decision.KEEP, f"parent of the untagged step images of {label}, which stay "
                                        "(untagged, so outside the scope)", decisions[parent_id][2])

    def keep_parents_of_kept(self, decisions: _ImageDecisions) -> None:
        """An image whose child stays cannot be deleted (the engine refuses), so it stays too.

        Walks up from each kept child (in id order, so the reason names the same child every
        time), once per image: linear in the number of images, however deep the chains.
        """
        stack = sorted(
            (i.id for i in self.snapshot.images if i.parent_id and decisions[i.id][0] is Decision.KEEP), reverse=True
        )
        while stack:
            child = self.image_by_id(stack.pop())
            parent_id = child.parent_id
            if parent_id in decisions and decisions[parent_id][0] is Decision.DELETE:
                label = child.repo_tags[0] if child.repo_tags else child.short_id
                decisions[parent_id] = (Decision.KEEP, f"parent of image {label}, which stays", decisions[parent_id][2])
                if self.image_by_id(parent_id).parent_id:
                    stack.append(parent_id)

    def image_depths(self) -> dict[str, int]:
        """Given the snapshot, return image id -> how many listed ancestors it has, when any."""
        depths: dict[str, int] = {}
        images, place = self.snapshot.images, self._image_place
        for image in images:
            # No parent (most images), or none listed: depth 0.
            if not image.parent_id or image.parent_id not in place:
                continue
            depth, seen, current = 0, {image.id}, image.parent_id
            while current and current in place and current not in seen:
                depth += 1
                seen.add(current)
                current = images[place[current]].parent_id
            if depth:
                depths[image.id] = depth
        return depths

    # -- build cache ------------------------------------------------------------------

    def plan_build_cache(self, ledger: LayerLedger) -> list[_Unfrozen]:
        listed = self.snapshot.build_cache
        # record id -> its place in the listing: the one dictionary of this pass; the rest are
        # lists by place (a look-up in a dictionary of 200,000 records is a trip to memory).
        # A record listed twice: its last listing counts, at the place of its first.
        index = dict(zip(map(attrgetter("id"), listed), count()))
        if len(index) != len(listed):
            listed = tuple({r.id: r for r in listed}.values())
            index = dict(zip(map(attrgetter("id"), listed), count()))
        # None: no parent, or none listed. (An empty parent is no parent, even with a record
        # whose id the engine left empty listed.)
        parents = [index.get(parent) if parent else None for parent in map(attrgetter("parent"), listed)]
        # Which images a record holds matters only to a scope.
        holding = ledger.records_holding_images() if self._scoped else {}
        decide = self.decide_record
        depths: list[int] = [-1] * len(listed)  # -1: not known yet

        def depth(place: int) -> int:
            # Walk up to the first ancestor whose depth is known, then remember the chain walked.
            chain, seen, current = [place], {place}, parents[place]
            while current is not None and current not in seen and depths[current] < 0:
                chain.append(current)
                seen.add(current)
                current = parents[current]
            if current in seen:  # a loop in the engine's answers: count the steps, remember nothing
                return len(chain) - 1
            top = depths[current] + 1 if current is not None else 0
            for steps_below_top, walked in enumerate(reversed(chain)):
                depths[walked] = top + steps_below_top
            return depths[place]

        # One pass in listing order (the order the records sit in memory, and parents usually
        # first, so most depths are one step from a known one): decide each record, make its
        # object, and deal it into the list of its depth. A depth depends only on the chain.
        made: list[_Unfrozen] = []
        by_depth: dict[int, list[_Unfrozen]] = defaultdict(list)
        kept_parents = []
        # Unscoped with build-cache pruning on (the common case), a record that is not in use
        # and has a last-use time is decided by its age alone: decide_record's answer, asked
        # here without a call per record.
        by_age_alone = not self._scoped and self.policy.build_cache
        decide_by_age = self.decide_by_age
        kind, keep = Kind.BUILD_CACHE, Decision.KEEP
        for place, r, parent in zip(count(), listed, parents):
            description = r.description
            names = (f"{r.type}: {description}" if description else r.type,)
            last_used = r.last_used
            if by_age_alone and last_used is not None and not r.in_use:
                decided = decide_by_age("last used", last_used, "unused")
            else:
                decided = decide(r, holding.get(r.id))
            o = _Unfrozen(kind, r.id, names, decided, r.size)
            made.append(o)
            if parent is None:
                level = depths[place] = 0
            elif depths[parent] >= 0:  # the parent's depth known already (most often: listed first)
                level = depths[place] = depths[parent] + 1
            else:
                level = depth(place)
            by_depth[level].append(o)
            if parent is not None and o.decision is keep:
                kept_parents.append(parent)

        # A record with a child that stays cannot be freed: BuildKit keeps parents of live
        # records. Walk up from every kept record; each record turns to "keep" at most once.
        # (The reason names no child, so the order of the walk changes nothing.)
        stack = kept_parents
        while stack:
            place = stack.pop()
            o = made[place]
            if o.decision is Decision.DELETE:
                o.decision, o.reason = Decision.KEEP, "parent of a cache record that stays"
                if parents[place] is not None:
                    stack.append(parents[place])

        # Children before parents (deepest first), then by id: each depth's list sorted by id
        # (ids are unique here: the order of one sort on (-depth, id), without a tuple each).
        ordered: list[_Unfrozen] = []
        for level in sorted(by_depth, reverse=True):
            ordered += sorted(by_depth[level], key=attrgetter("id"))
        self._records_made = made
        return ordered

    def decide_record(
        self, record: BuildCacheRecord, holds_images: set[str] | None
    ) -> tuple[Decision, str, datetime | None]:
        if self._scoped:
            # Labels on build cache do not work, so a record belongs to the scope only when
            # the layer it holds belongs to in-scope images alone: those there, and those a
            # prune deleted (remembered as CacheOwner).
            owners = self.memory.cache_owners.get(record.id, ())
            if not holds_images and not owners:
                return Decision.KEEP, "out of scope: not attributable to an image in scope", None
            outside = [i for i in holds_images or () if self.policy.image_in_scope(self.image_by_id(i))]
            if outside:
                return Decision.KEEP, "out of scope: holds layers of images outside the scope", None
            if any(self.policy.image_in_scope(owner.as_image()) for owner in owners):
                return Decision.KEEP, "out of scope: held layers of deleted images outside the scope", None
            if not holds_images and _used_since(record, owners):
                return Decision.KEEP, "out of scope: used since the images it held were deleted", None
        if not self.policy.build_cache:
            return Decision.KEEP, "build-cache pruning is off", None
        if record.in_use:
            return Decision.KEEP, "in use by a running build", None
        when = record.last_used or record.created
        what = "last used" if record.last_used else "created (never used)"
        if when is None:
            return Decision.KEEP, "no usable timestamp: age unknown", None
        return self.decide_by_age(what, when, "unused")

    # -- volumes ----------------------------------------------------------------------

    def plan_volumes(self, removed_containers: set[str]) -> list[_Unfrozen]:
        users: dict[str, list[Container]] = defaultdict(list)
        for container in self.snapshot.containers:
            if container.id not in removed_containers:
                for name in container.volumes:
                    users[name].append(container)
        return [
            _Unfrozen(
                Kind.VOLUME,
                v.name,
                (v.name,),
                self.decide_volume(v, users.get(v.name, []), removed_containers),
                v.size,
            )
            for v in sorted(self.snapshot.volumes, key=lambda v: v.name)
        ]

    def decide_volume(
        self, volume: Volume, staying_users: list[Container], removed_containers: set[str]
    ) -> tuple[Decision, str, datetime | None]:
        if not self.policy.labels_match(volume.labels):
            return Decision.KEEP, "out of scope: lacks label " + ", ".join(str(s) for s in self.policy.labels), None
        if self.policy.repos:
            return Decision.KEEP, "out of scope: volumes belong to no repository (--repo)", None
        if self.policy.volumes is VolumeMode.NONE:
            return Decision.KEEP, "volume pruning is off (use --volumes)", None
        if staying_users:
            name = staying_users[0].names[0] if staying_users[0].names else staying_users[0].short_id
            return Decision.KEEP, f"in use by container {name}", None
        removed_users = sum(
            1 for c in self.snapshot.containers if c.id in removed_containers and volume.name in c.volumes
        )
        if volume.ref_count != 0 and volume.ref_count != removed_users:
            return Decision.KEEP, "in use (the engine counts containers using it)", None
        if self.policy.volumes is VolumeMode.ANONYMOUS and not volume.anonymous:
            return Decision.KEEP, "named volume: pruned only with --volumes=all", None
        when = volume.created
        if when is None:
            return Decision.KEEP, "no creation time: age unknown", None
        return self.decide_by_age("created", when, "unused")


