"""Disk pressure: which objects to evict, least recently used first, to get under the low mark.

Pure. The supervisor makes an *eligibility* plan with the planner (the user's policy with
every object counting as old, containers and volumes left alone: see ``eviction_policy``),
so every safety rule of the planner still holds: scope, exclusions, images used by any
container, keep-recent per repository, build cache in use, parents of what stays. This
module then picks from that plan's deletions, images and build cache in one budget, the
least recently used first (by the planner's reference time: last tag or last use for
images, last use for build cache), until the bytes they free (counted by the layer
ledger, so shared layers and cache-held layers are not double counted) cover what must
go. When even every eligible object is not enough, it says how far short it falls and
what holds the rest.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from ..model import Kind
from ..planner import Decision, Plan, PlannedObject
from ..policy import Policy, VolumeMode
from ..units import format_bytes, format_duration
from ..usage import LayerLedger, ObjectKey

EVICTABLE = (Kind.IMAGE, Kind.BUILD_CACHE)


def eviction_policy(policy: Policy) -> Policy:
    """Given the user's policy, return the one whose deletions are the objects eviction may pick."""
    return replace(policy, max_age=timedelta(seconds=-1), containers=False, volumes=VolumeMode.NONE)


@dataclass(frozen=True)
class Eviction:
    """The eviction plan: ``plan`` deletes exactly the chosen objects, in a safe order."""

    plan: Plan
    need_bytes: int
    predicted_bytes: int
    # What could not be freed without breaking a safety rule; 0 when the target is met.
    shortfall: int
    # Why the rest stays, e.g. {"in use by container": 3, "excluded": 1}, when short.
    protected: dict[str, int]

    @property
    def met(self) -> bool:
        return self.shortfall == 0

    def describe(self) -> str:
        if self.met:
            return (f"evicting {len(self.plan.deletions)} least recently used object(s) to free "
                    f"{format_bytes(self.predicted_bytes)} (needed {format_bytes(self.need_bytes)})")
        held = ", ".join(f"{count} {why}" for why, count in sorted(self.protected.items())) or "nothing eligible"
        return (f"cannot get under the low watermark without breaking a safety rule: every eligible object "
                f"frees {format_bytes(self.predicted_bytes)} of the {format_bytes(self.need_bytes)} needed, "
                f"{format_bytes(self.shortfall)} short; kept: {held}")


def plan_eviction(eligible: Plan, need_bytes: int) -> Eviction:
    """Given an eligibility plan and how many bytes must go, return the least-recently-used eviction.

    Example: three unused images of 30MB last used 3h, 2h and 1h ago and ``need_bytes`` 50MB
    -> the two used 3h and 2h ago are evicted, the third stays ("not needed").
    """
    snapshot = eligible.snapshot
    ledger = eligible.ledger if eligible.ledger is not None else LayerLedger(snapshot)
    position = {o.key: index for index, o in enumerate(eligible.objects)}
    candidates = {o.key: o for o in eligible.deletions if o.kind in EVICTABLE}

    children: dict[ObjectKey, list[ObjectKey]] = defaultdict(list)
    for image in snapshot.images:
        if image.parent_id:
            children[(Kind.IMAGE, image.parent_id)].append((Kind.IMAGE, image.id))
    for record in snapshot.build_cache:
        if record.parent:
            children[(Kind.BUILD_CACHE, record.parent)].append((Kind.BUILD_CACHE, record.id))

    def with_descendants(key: ObjectKey, seen: set[ObjectKey]) -> list[ObjectKey]:
        # A parent goes only after its children (the engine refuses otherwise); the planner
        # already keeps parents of anything that stays, so descendants here are candidates.
        found = []
        for child in children.get(key, ()):
            if child in candidates and child not in seen:
                seen.add(child)
                found += with_descendants(child, seen)
        return found + [key]

    oldest = datetime.min.replace(tzinfo=eligible.now.tzinfo)
    lru = sorted(candidates.values(), key=lambda o: (o.reference_time or oldest, o.kind.value, o.id))
    chosen: set[ObjectKey] = set()
    # Images whose answers pulled other images in (their descendants go first): read afresh
    # before the run like keep-recent places (Plan.ranked), as a pick rests on their last-tag time.
    pulling: set[str] = set()
    freed_total = 0
    for candidate in lru:
        if freed_total >= need_bytes:
            break
        if candidate.key in chosen:
            continue
        picked = with_descendants(candidate.key, set(chosen))
        if len(picked) > 1 and candidate.kind is Kind.IMAGE:
            pulling.add(candidate.id)
        chosen.update(picked)
        order = sorted(chosen, key=position.__getitem__)
        freed_total = ledger.freed(order).total

    order = sorted(chosen, key=position.__getitem__)
    freed = ledger.freed(order)
    objects = []
    for o in eligible.objects:
        if o.key in chosen:
            objects.append(replace(
                o,
                reason=_eviction_reason(o, eligible.now),
                bytes=freed.by_object.get(o.key, 0),
                bytes_held_by_cache=freed.held_by_cache.get(o.key, 0),
            ))
        elif o.decision is Decision.DELETE:
            why = ("not needed: usage gets under the low watermark without it" if o.kind in EVICTABLE
                   else "not evicted under disk pressure: only images and build cache are")
            objects.append(replace(o, decision=Decision.KEEP, bytes=0, bytes_held_by_cache=0, reason=why))
        else:
            objects.append(o)
    plan = Plan(objects=tuple(objects), now=eligible.now, policy=eligible.policy, snapshot=snapshot, ledger=ledger,
                ranked=tuple(sorted(set(eligible.ranked) | pulling)))
    shortfall = max(need_bytes - freed.total, 0)
    protected: dict[str, int] = {}
    if shortfall:
        unique = ledger.unique_bytes()
        counts: Counter[str] = Counter()
        for o in plan.kept:
            if o.kind in EVICTABLE and (unique.get(o.key, 0) > 0 or o.size > 0):
                counts[_category(o.reason)] += 1
        protected = dict(counts)
    return Eviction(plan=plan, need_bytes=need_bytes, predicted_bytes=freed.total, shortfall=shortfall,
                    protected=protected)


def _eviction_reason(o: PlannedObject, now: datetime) -> str:
    if o.reference_time is None:
        return "least recently used: evicted under disk pressure"
    age = format_duration(now - o.reference_time)
    what = "last used" if o.kind is Kind.BUILD_CACHE else "last tagged or used"
    return f"least recently used ({what} {age} ago): evicted under disk pressure"


def _category(reason: str) -> str:
    """Given a kept object's reason, return its kind of protection, without names: "in use by container"."""
    head = reason.split(":", 1)[0]
    if head.startswith("in use by container"):
        return "in use by a container"
    if head.startswith("parent of"):
        return "parent of something that stays"
    if head.startswith("kept recent"):
        return "kept recent (keep_recent)"
    return head
