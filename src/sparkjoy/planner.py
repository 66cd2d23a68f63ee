"""The planner: snapshot + policy + remembered use + now -> a plan with a reason per object.

Pure: no engine calls, no clock, no printing. The same inputs always give the same plan.

Order of deletion (the executor follows it): stopped containers first, so they stop
pinning their images; then images, children before parents; then build-cache records,
children before parents; then volumes.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Mapping

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

    @property
    def key(self) -> ObjectKey:
        return (self.kind, self.id)


@dataclass(frozen=True)
class Plan:
    """Every object of the snapshot with its decision; ``deletions`` in execution order."""

    objects: tuple[PlannedObject, ...]
    now: datetime
    policy: Policy
    snapshot: Snapshot = field(repr=False, compare=False)

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


EMPTY_MEMORY = Memory()


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
        self.images_by_id = {image.id: image for image in snapshot.images}
        self._everything_old = policy.everything_old
        self._max_age = policy.max_age
        self._scoped = policy.scoped
        # Said in the reason of every object the age decides: worded once.
        self._max_age_text = (
            "negative max age: everything counts as old"
            if self._everything_old
            else f"max age {format_duration(policy.max_age)}"
        )

    def decide_by_age(self, what: str, when: datetime, old: str) -> tuple[Decision, str, datetime]:
        """Given what happened at ``when`` (``"last used"``) and the word for old (``"unused"``),
        return the decision the age alone makes, with its reason."""
        now = self.now
        age = now - when
        ago = format_duration(age) + " ago" if when <= now else "in the future"
        if self._everything_old or age > self._max_age:
            return Decision.DELETE, f"{old}: {what} {ago}, older than {self._max_age_text}", when
        return Decision.KEEP, f"recent: {what} {ago}, within {self._max_age_text}", when

    def run(self) -> Plan:
        containers = self.plan_containers()
        removed_containers = {d[1] for d in containers if d[3][0] is Decision.DELETE}
        images = self.plan_images(removed_containers)
        ledger = LayerLedger(self.snapshot)
        cache = self.plan_build_cache(ledger)
        volumes = self.plan_volumes(removed_containers)

        # Drafts first, objects once: the bytes of a deletion depend on every deletion before it.
        drafts = containers + images + cache + volumes
        deletion_order = [(d[0], d[1]) for d in drafts if d[3][0] is Decision.DELETE]
        freed = ledger.freed(deletion_order)
        by_object, held = freed.by_object, freed.held_by_cache
        # The deletions' keys, in the order their drafts come: kept objects free nothing.
        keys = iter(deletion_order)
        objects = []
        for kind, object_id, names, (decision, reason, when), size in drafts:
            freed_bytes = held_bytes = 0
            if decision is Decision.DELETE:
                key = next(keys)
                freed_bytes, held_bytes = by_object[key], held.get(key, 0)
            objects.append(
                PlannedObject(
                    kind,
                    object_id,
                    names,
                    decision,
                    reason,
                    freed_bytes,
                    held_bytes,
                    when,
                    max(size, 0),
                    not reason.startswith("out of scope"),
                )
            )
        return Plan(objects=tuple(objects), now=self.now, policy=self.policy, snapshot=self.snapshot)

    # -- containers -------------------------------------------------------------------

    def container_scope_problem(self, container: Container) -> str | None:
        if not self.policy.labels_match(container.labels):
            return "out of scope: lacks label " + ", ".join(str(s) for s in self.policy.labels)
        if self.policy.repos:
            image = self.images_by_id.get(container.image_id)
            tags = image.repo_tags if image else (container.image_ref,)
            if not any(self.policy.repo_matches(repository_of(tag)) for tag in tags if tag):
                return "out of scope: its image's repository does not match --repo"
        return None

    def plan_containers(self) -> list[_Draft]:
        return [
            (Kind.CONTAINER, c.id, c.names, self.decide_container(c), c.size_rw)
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

    def plan_images(self, removed_containers: set[str]) -> list[_Draft]:
        pinned: dict[str, Container] = {}
        for container in self.snapshot.containers:
            if container.id not in removed_containers:
                pinned.setdefault(container.image_id, container)

        decisions: dict[str, tuple[Decision, str, datetime | None]] = {}
        candidates: list[tuple[Image, datetime]] = []
        # Unscoped and without exclusions (the common case), no image needs asking.
        excluding = bool(self.policy.exclude)
        for image in self.snapshot.images:
            problem = self.policy.image_in_scope(image) if self._scoped else None
            when, what = self.image_reference_time(image)
            if problem:
                decisions[image.id] = (Decision.KEEP, problem, when)
            elif not self.policy.images:
                decisions[image.id] = (Decision.KEEP, "image pruning is off", when)
            elif excluding and (excluded := self.policy.excluded_by(image)) is not None:
                pattern, tag = excluded
                decisions[image.id] = (Decision.KEEP, f"excluded: {tag} matches --exclude {pattern}", when)
            elif image.id in pinned:
                user = pinned[image.id]
                name = user.names[0] if user.names else user.short_id
                decisions[image.id] = (Decision.KEEP, f"in use by container {name} ({user.state.value})", when)
            elif when is None:
                decisions[image.id] = (
                    Decision.KEEP,
                    "age unknown: no last-tag time and never seen in use by sparkjoy",
                    None,
                )
            else:
                decisions[image.id] = decided = self.decide_by_age(what, when, "old")
                if decided[0] is Decision.DELETE:
                    candidates.append((image, when))

        self.keep_recent_per_repository(candidates, decisions)
        self.keep_parents_of_kept(decisions)

        depth = self.image_depths()
        ageless = datetime.min.replace(tzinfo=self.now.tzinfo)
        ordered = sorted(
            self.snapshot.images,
            key=lambda i: (-depth[i.id], decisions[i.id][2] or ageless, i.id),
        )
        return [(Kind.IMAGE, i.id, i.repo_tags, decisions[i.id], i.size) for i in ordered]

    def keep_recent_per_repository(
        self, candidates: list[tuple[Image, datetime]], decisions: dict[str, tuple[Decision, str, datetime | None]]
    ) -> None:
        if self.policy.keep_recent <= 0:
            return
        by_repository: dict[str, list[tuple[Image, datetime]]] = defaultdict(list)
        for image, when in candidates:
            for repository in image.repositories:
                by_repository[repository].append((image, when))
        for repository, members in sorted(by_repository.items()):
            members.sort(key=lambda pair: (pair[1], pair[0].id), reverse=True)
            for rank, (image, when) in enumerate(members[: self.policy.keep_recent], start=1):
                if decisions[image.id][0] is Decision.DELETE:
                    decisions[image.id] = (
                        Decision.KEEP,
                        f"kept recent: #{rank} newest of repository {repository} (keep-recent {self.policy.keep_recent})",
                        when,
                    )

    def keep_parents_of_kept(self, decisions: dict[str, tuple[Decision, str, datetime | None]]) -> None:
        """An image whose child stays cannot be deleted (the engine refuses), so it stays too.

        Walks up from each kept child (in id order, so the reason names the same child every
        time), once per image: linear in the number of images, however deep the chains.
        """
        stack = sorted(
            (i.id for i in self.snapshot.images if i.parent_id and decisions[i.id][0] is Decision.KEEP), reverse=True
        )
        while stack:
            child = self.images_by_id[stack.pop()]
            parent_id = child.parent_id
            if parent_id in decisions and decisions[parent_id][0] is Decision.DELETE:
                label = child.repo_tags[0] if child.repo_tags else child.short_id
                decisions[parent_id] = (Decision.KEEP, f"parent of image {label}, which stays", decisions[parent_id][2])
                if self.images_by_id[parent_id].parent_id:
                    stack.append(parent_id)

    def image_depths(self) -> dict[str, int]:
        depths: dict[str, int] = {}
        for image in self.snapshot.images:
            if image.parent_id not in self.images_by_id:  # no parent listed (most images)
                depths[image.id] = 0
                continue
            depth, seen, current = 0, {image.id}, image.parent_id
            while current and current in self.images_by_id and current not in seen:
                depth += 1
                seen.add(current)
                current = self.images_by_id[current].parent_id
            depths[image.id] = depth
        return depths

    # -- build cache ------------------------------------------------------------------

    def plan_build_cache(self, ledger: LayerLedger) -> list[_Draft]:
        records = {r.id: r for r in self.snapshot.build_cache}
        # Which images a record holds matters only to a scope.
        holding = ledger.records_holding_images() if self._scoped else {}
        decisions: dict[str, tuple[Decision, str, datetime | None]] = {}
        for record in records.values():
            decisions[record.id] = self.decide_record(record, holding.get(record.id))

        # A record with a child that stays cannot be freed: BuildKit keeps parents of live
        # records. Walk up from every kept record; each record turns to "keep" at most once.
        stack = [r.parent for r in records.values() if r.parent and decisions[r.id][0] is Decision.KEEP]
        while stack:
            parent = stack.pop()
            if parent in decisions and decisions[parent][0] is Decision.DELETE:
                decisions[parent] = (Decision.KEEP, "parent of a cache record that stays", decisions[parent][2])
                if records[parent].parent:
                    stack.append(records[parent].parent)

        depths: dict[str, int] = {}

        def depth(record: BuildCacheRecord) -> int:
            parent = record.parent
            if parent in depths and parent != record.id:  # a parent listed first: known already
                depths[record.id] = depths[parent] + 1
                return depths[record.id]
            # Walk up to the first ancestor whose depth is known, then remember the chain walked.
            chain, seen, current = [record.id], {record.id}, record.parent
            while current and current in records and current not in seen and current not in depths:
                chain.append(current)
                seen.add(current)
                current = records[current].parent
            if current in seen:  # a loop in the engine's answers: count the steps, remember nothing
                return len(chain) - 1
            top = depths[current] + 1 if current in depths else 0
            for steps_below_top, record_id in enumerate(reversed(chain)):
                depths[record_id] = top + steps_below_top
            return depths[record.id]

        ordered = sorted(records.values(), key=lambda r: (-depth(r), r.id))
        return [
            (
                Kind.BUILD_CACHE,
                r.id,
                (f"{r.type}: {r.description}" if r.description else r.type,),
                decisions[r.id],
                r.size,
            )
            for r in ordered
        ]

    def decide_record(
        self, record: BuildCacheRecord, holds_images: set[str] | None
    ) -> tuple[Decision, str, datetime | None]:
        if self._scoped:
            # Labels on build cache do not work, so a record belongs to the scope only when
            # the layer it holds belongs to in-scope images alone.
            if not holds_images:
                return Decision.KEEP, "out of scope: not attributable to an image in scope", None
            outside = [i for i in holds_images if self.policy.image_in_scope(self.images_by_id[i])]
            if outside:
                return Decision.KEEP, "out of scope: holds layers of images outside the scope", None
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

    def plan_volumes(self, removed_containers: set[str]) -> list[_Draft]:
        users: dict[str, list[Container]] = defaultdict(list)
        for container in self.snapshot.containers:
            if container.id not in removed_containers:
                for name in container.volumes:
                    users[name].append(container)
        return [
            (
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


Decided = tuple[Decision, str, "datetime | None"]
# An object decided, before the bytes of the whole plan are known: (kind, id, names, decided, size).
_Draft = tuple[Kind, str, tuple[str, ...], Decided, int]
