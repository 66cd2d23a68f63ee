"""The executor: deletes exactly the plan's deletions, in order, re-checking each object first.

It is the only code that deletes. Each object is re-checked against the engine just before
its deletion; anything that changed since the plan (a new container, a moved tag, a
build now using a cache record) is kept and reported with the reason. Nothing is ever
forced: an image is untagged tag by tag, and the engine's 409 is taken as "kept".
Failures are collected per object, never raised out of the run, except a lost engine,
which stops the run with the rest reported as not attempted.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Callable, Iterator, Protocol

from .engine.base import Engine, ImageState
from .errors import EngineBusy, EngineConflict, EngineError, EngineNotFound, EngineUnreachable
from .model import Kind, repository_of, short_id
from .planner import Plan, PlannedObject


# Seconds added to a run's length when its events are read for tags moved in it: the engine's
# clock and ours tick apart, and the re-check of the run's first image came before it started.
MOVED_TAG_MARGIN_S = 5.0


class Outcome(str, Enum):
    DELETED = "deleted"
    KEPT = "kept"  # changed since the plan, or the engine refused: the object stays, reason given
    GONE = "gone"  # already gone when we came to it
    PARTIAL = "partial"  # some tags were removed, then the engine refused the rest
    FAILED = "failed"  # the engine answered with an error
    SKIPPED = "not attempted"  # the run stopped (engine lost, or shutdown) before this object

    @property
    def is_failure(self) -> bool:
        return self in (Outcome.FAILED, Outcome.PARTIAL, Outcome.SKIPPED)


@dataclass(frozen=True)
class ObjectResult:
    planned: PlannedObject
    outcome: Outcome
    detail: str = ""
    removed_tags: tuple[str, ...] = ()
    # What went that the plan did not name: a tag added, or an image a moved tag named, in
    # the instant between the re-check and the deletion (see Executor._untag_and_delete).
    unplanned: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuditFinding:
    kind: Kind
    id: str
    problem: str


@dataclass(frozen=True)
class RunResult:
    plan: Plan
    results: tuple[ObjectResult, ...]
    usage_before: int
    usage_after: int
    stopped_early: str = ""  # why the run stopped before the end, if it did
    audit: tuple[AuditFinding, ...] | None = None  # None when no audit was asked for

    @property
    def reclaimed_bytes(self) -> int:
        """Measured: the engine's usage before minus after (other activity on the engine shows here too)."""
        return self.usage_before - self.usage_after

    @property
    def failures(self) -> tuple[ObjectResult, ...]:
        return tuple(r for r in self.results if r.outcome.is_failure)

    @property
    def unplanned(self) -> tuple[str, ...]:
        """What this run removed beyond its plan (in a race no API call can close), if anything."""
        return tuple(item for r in self.results for item in r.unplanned)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.stopped_early and not (self.audit or ()) and not self.unplanned

    def count(self, kind: Kind, outcome: Outcome = Outcome.DELETED) -> int:
        return sum(1 for r in self.results if r.planned.kind is kind and r.outcome is outcome)

    def deleted_ids(self, kind: Kind) -> set[str]:
        """Given a kind, return the ids of the objects of it this run deleted."""
        return {r.planned.id for r in self.results if r.planned.kind is kind and r.outcome is Outcome.DELETED}


def ranks_changed(engine: Engine, plan: Plan) -> list[str]:
    """Given a plan, return the images of ``plan.ranked`` that the engine now reports with other
    tags or another last-tag time than the plan's snapshot, or no longer has.

    The re-check before each deletion sees only the image it deletes, but whether an old image
    of a repository goes also rests on the answers of the newer ones that took the keep-recent
    places (and, in an eviction, on those of the image that pulled it in as its child). A plan
    made from remembered answers is run only when these still hold: then every answer a
    deletion rests on has been read afresh, its own by the re-check (a parent whose child stays
    is kept by the executor, whatever the plan says). Otherwise the plan must be made again
    from fresh answers.

    Only the last-tag time can go stale unseen: tags are compared with the fresh listing,
    labels, parent and layers never change for an image ID, and containers are listed fresh.
    """
    read = {image.id: image for image in plan.snapshot.images}
    changed = []
    for image_id in plan.ranked:
        now, then = engine.image_state(image_id), read.get(image_id)
        if now is None or then is None or set(now.repo_tags) != set(then.repo_tags) \
                or now.last_tag_time != then.last_tag_time:
            changed.append(image_id)
    return changed


class Reporter(Protocol):
    def object_done(self, result: ObjectResult) -> None: ...


BUSY_RETRIES = 5
DELETE_WORKERS = 8
# Images in one batch at most: a batch's results are checked for tags moved in the race window
# (its events, read from the engine's buffer of its last 256) and reported (``-v`` prints them)
# together, while the workers delete the next batch (see Executor._run_ahead). One batch of every
# image in the plan (thousands) showed no progress until the end, let Ctrl-C through only after
# the last deletion, and could outrun that buffer. Twice the workers keeps them all busy.
DELETE_BATCH = 2 * DELETE_WORKERS


@dataclass
class Executor:
    engine: Engine
    reporter: Reporter | None = None
    # Checked between objects: a shutdown request lets the deletion in progress finish.
    should_stop: Callable[[], bool] = lambda: False
    # Waits between retries when the engine says another prune is running. Injected so
    # tests need not wait; the daemon passes an interruptible wait.
    wait: Callable[[float], None] = time.sleep
    audit: bool = False
    # Images deleted at once (the engine's own work per image is mostly file removal, which
    # overlaps well): about twice as fast as one at a time on 2 cores. 1: strictly in order.
    workers: int = DELETE_WORKERS
    # Images in one batch at most (see DELETE_BATCH).
    batch_size: int = DELETE_BATCH
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    _stop_reason: str = field(default="", init=False, repr=False, compare=False)
    # Image id -> the snapshot's images built on it; and the images this run deleted (or found
    # gone). Written as results come in; a worker asks it only of its own image's children,
    # which are in earlier groups (a group never holds an image and its child), and the next
    # group starts only once every result of the one before is in.
    _children: dict[str, list[str]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _gone_images: set[str] = field(default_factory=set, init=False, repr=False, compare=False)
    # Planned image id -> the tags this run removed from it by name (see _moved_tags); and the
    # moment each object's attempt started (a batch's events are read from its first).
    _by_name: dict[str, list[str]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _started: dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False)
    # Images whose untagged step images did not all go (see _hidden_parents): their listed
    # parent still has children, so it is not free to go either.
    _steps_left: set[str] = field(default_factory=set, init=False, repr=False, compare=False)
    # Image id -> its digest references in the plan's snapshot (a new one is a change: _image).
    _digests: dict[str, frozenset[str]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def execute(self, plan: Plan, usage_before: int | None = None) -> RunResult:
        """Delete the plan's deletions, re-checking each; return a result per object and the
        engine's usage before and after. ``usage_before``: what the engine used when the
        plan's snapshot was taken (``usage.engine_usage(plan.snapshot)``), for a caller that
        executes right after taking it; None (the default) reads it from the engine now."""
        stopped_early = ""
        try:
            if usage_before is None:
                usage_before = self.engine.usage()
        except EngineUnreachable as error:
            usage_before, stopped_early = 0, f"engine unreachable: {error.cause}"
        except EngineError as error:
            # An engine that cannot say what it holds is no engine to delete from.
            usage_before, stopped_early = 0, f"nothing deleted: reading usage before the run failed: {error}"
        measured = not stopped_early
        self._stop_reason = stopped_early
        self._children, self._gone_images, self._steps_left = {}, set(), set()
        self._by_name, self._started = {}, {}
        self._digests = {i.id: frozenset(i.repo_digests) for i in plan.snapshot.images if i.repo_digests}
        for image in plan.snapshot.images:
            if image.parent_id:
                self._children.setdefault(image.parent_id, []).append(image.id)
        results: list[ObjectResult] = []
        removed_containers: set[str] = set()
        pool: ThreadPoolExecutor | None = None
        try:
            for group in self._groups(plan):
                batches = self._cut(group)
                if len(group) == 1:
                    taken: Iterator[list[ObjectResult]] = iter([[self._attempt(group[0], removed_containers)]])
                else:
                    pool = pool or ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="delete")
                    taken = self._run_ahead(pool, batches, removed_containers)
                for done in taken:
                    # Checked per batch, before its results are reported: a batch's events fit
                    # in the engine's buffer of its last 256, a whole run's may not.
                    by_name = self._untagged_by_name({r.planned.id for r in done})
                    if by_name and self._stop_reason.startswith("engine unreachable"):
                        done = self._moved_tags_unknown(done, by_name, self._stop_reason)
                    elif by_name:
                        elapsed = time.monotonic() - min(self._started[r.planned.id] for r in done)
                        done = self._moved_tags(done, by_name, elapsed)
                    for result in done:
                        if result.outcome is Outcome.DELETED and result.planned.kind is Kind.CONTAINER:
                            removed_containers.add(result.planned.id)
                        if (result.outcome in (Outcome.DELETED, Outcome.GONE) and result.planned.kind is Kind.IMAGE
                                and result.planned.id not in self._steps_left):
                            self._gone_images.add(result.planned.id)
                        results.append(result)
                        if self.reporter:
                            self.reporter.object_done(result)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        stopped_early = self._stop_reason
        usage_after = usage_before
        if measured:
            try:
                usage_after = self.engine.usage()
            except EngineError as error:
                stopped_early = stopped_early or f"reclaimed space not measured: {error}"
            except EngineUnreachable as error:
                stopped_early = stopped_early or f"engine unreachable after the run: {error.cause}"
        audit = None
        if self.audit and not stopped_early.startswith("engine unreachable"):
            try:
                audit = self._audit(plan)
            except (EngineError, EngineUnreachable) as error:
                # An audit that could not look is no clean audit: the run is not ok.
                problem = f"audit not done: {error}"
                stopped_early = f"{stopped_early}; {problem}" if stopped_early else problem
        return RunResult(plan, tuple(results), usage_before, usage_after, stopped_early, audit)

    # -- one object ---------------------------------------------------------------------

    def _run_ahead(self, pool: ThreadPoolExecutor, batches: list[list[PlannedObject]],
                   removed_containers: set[str]) -> Iterator[list[ObjectResult]]:
        """Given a group's batches, yield each batch's results in plan order while the workers
        already delete the next batch, and no further: a batch's events, read once its results
        are in, span two batches at most (the engine keeps its last 256), and the workers have
        work while the batch before is checked and reported."""
        submitted = [[pool.submit(self._attempt, planned, removed_containers) for planned in batch]
                     for batch in batches[:2]]
        for index in range(len(batches)):
            yield [future.result() for future in submitted[index]]
            if index + 2 < len(batches):  # once that batch is checked and reported
                submitted.append([pool.submit(self._attempt, planned, removed_containers)
                                  for planned in batches[index + 2]])

    def _untagged_by_name(self, planned_ids: set[str]) -> list[tuple[str, str]]:
        """Given the planned ids of a batch, return (planned id, tag) for each tag the run removed
        from them by name."""
        return [(i, tag) for i in sorted(planned_ids) for tag in self._by_name.get(i, ())]

    @staticmethod
    def _moved_tags_unknown(results: list[ObjectResult], by_name: list[tuple[str, str]],
                            why: str) -> list[ObjectResult]:
        """Not checked is not "nothing moved": the results that untagged by name say so."""
        unchecked = {image_id for image_id, _ in by_name}
        note = f"whether a tag moved to another image just before its untag is not known: {why}"
        return [replace(r, detail=f"{r.detail}; {note}" if r.detail else note)
                if r.planned.id in unchecked else r for r in results]

    def _moved_tags(self, results: list[ObjectResult], by_name: list[tuple[str, str]],
                    elapsed_s: float) -> list[ObjectResult]:
        """A tag before an image's last is removed by name, and one moved to another image in
        the instant before is removed from that image instead: the engine's answer reads the
        same, and only its events tell (one read per batch that untagged by name). Such a
        tag, put on another image during the run and not on it now, was removed beyond the plan,
        and is no removed tag of the planned image. An image the untag deleted is named already
        (``_untag_and_delete``); events that cannot be read are said so in those results' detail."""
        untagged = {tag for _, tag in by_name}
        try:
            put = self.engine.tags_put(untagged, elapsed_s + MOVED_TAG_MARGIN_S)
        except (EngineError, EngineUnreachable) as error:
            return self._moved_tags_unknown(results, by_name, str(error))
        lost: dict[str, list[tuple[str, str]]] = {}  # planned image id -> (tag, what happened to it)
        for image_id, tag in by_name:
            for other in sorted(put.get(tag, set()) - {image_id}):
                try:
                    now = self.engine.image_state(other)
                except (EngineError, EngineUnreachable):
                    continue
                if now is not None and tag not in now.repo_tags:
                    lost.setdefault(image_id, []).append(
                        (tag, f"tag {tag} (moved to image {short_id(other)} just before its untag, which "
                              "removed it from there)"))
        if not lost:
            return results
        fixed = []
        for result in results:
            found = lost.get(result.planned.id)
            if found and result.planned.kind is Kind.IMAGE:
                tags = {tag for tag, _ in found}
                result = replace(result, removed_tags=tuple(t for t in result.removed_tags if t not in tags),
                                 unplanned=(*result.unplanned, *(note for _, note in found)))
            fixed.append(result)
        return fixed

    def _groups(self, plan: Plan) -> list[list[PlannedObject]]:
        """Given the plan, return its deletions in order, in groups whose objects may run at once.

        Images go ``workers`` at a time; a group ends before an image whose child is in it, so
        children are gone before their parents, as the plan orders them. Containers go before
        any image (they pin images), build cache one record at a time (the engine runs one
        prune at a time), volumes last: one object per group.
        """
        parent_of = {image.id: image.parent_id for image in plan.snapshot.images if image.parent_id}
        groups: list[list[PlannedObject]] = []
        current: list[PlannedObject] = []
        parents_of_current: set[str] = set()
        for planned in plan.deletions:
            parallel = planned.kind is Kind.IMAGE and self.workers > 1
            if current and (not parallel or planned.id in parents_of_current):
                groups.append(current)
                current, parents_of_current = [], set()
            if not parallel:
                groups.append([planned])
                continue
            current.append(planned)
            if planned.id in parent_of:
                parents_of_current.add(parent_of[planned.id])
        if current:
            groups.append(current)
        return groups

    def _batches(self, plan: Plan) -> list[list[PlannedObject]]:
        """Given the plan, return its groups (``_groups``) cut into batches (``_cut``)."""
        return [batch for group in self._groups(plan) for batch in self._cut(group)]

    def _cut(self, group: list[PlannedObject]) -> list[list[PlannedObject]]:
        """Given a group, return it in batches of ``batch_size`` at most, in order: the units
        whose results are checked for moved tags and reported together."""
        return [group[start:start + self.batch_size] for start in range(0, len(group), self.batch_size)]

    def _attempt(self, planned: PlannedObject, removed_containers: set[str]) -> ObjectResult:
        """Delete one object unless the run has stopped; never raises. Runs in a worker thread
        for images: the run's stop reason is shared, under a lock."""
        self._started[planned.id] = time.monotonic()
        with self._lock:
            if not self._stop_reason and self.should_stop():
                self._stop_reason = "shutdown requested"
            if self._stop_reason:
                return ObjectResult(planned, Outcome.SKIPPED, self._stop_reason)
        try:
            return self._execute_one(planned, removed_containers)
        except EngineUnreachable as error:
            with self._lock:
                self._stop_reason = self._stop_reason or f"engine unreachable: {error.cause}"
            # Attempted, not skipped: the engine may have done the deletion and gone
            # before answering, so only the objects after this one are "not attempted".
            return ObjectResult(
                planned, Outcome.FAILED, f"engine unreachable: {error.cause} (it may or may not have been deleted)"
            )
        except EngineError as error:
            return self._failed(planned, error)

    def _execute_one(self, planned: PlannedObject, removed_containers: set[str]) -> ObjectResult:
        if planned.kind is Kind.CONTAINER:
            return self._container(planned)
        if planned.kind is Kind.IMAGE:
            return self._image(planned, removed_containers)
        if planned.kind is Kind.BUILD_CACHE:
            return self._build_cache(planned)
        return self._volume(planned)

    def _container(self, planned: PlannedObject) -> ObjectResult:
        current = self.engine.container_state(planned.id)
        if current is None:
            return ObjectResult(planned, Outcome.GONE, "already removed")
        if not current.state.stopped:
            return ObjectResult(planned, Outcome.KEPT, f"changed since the plan: now {current.state.value}")
        if current.finished and planned.reference_time and current.finished > planned.reference_time:
            # It ran again since the answer the plan rests on (which may be a remembered one).
            return ObjectResult(planned, Outcome.KEPT, "changed since the plan: ran again, finished at "
                                f"{current.finished:%Y-%m-%d %H:%M:%S}")
        try:
            self.engine.remove_container(planned.id)
        except EngineNotFound:
            return ObjectResult(planned, Outcome.GONE, "already removed")  # between the re-check and now
        except EngineConflict as error:
            return ObjectResult(planned, Outcome.KEPT, f"engine refused: {error.message}")
        return ObjectResult(planned, Outcome.DELETED)

    def _image(self, planned: PlannedObject, removed_containers: set[str]) -> ObjectResult:
        # A child that stays (its re-check kept it, or it failed) keeps its parent: the engine
        # refuses to delete the parent then, but it would remove the parent's tags first, one
        # by one, and `FROM base:1` would break.
        staying = [c for c in self._children.get(planned.id, ()) if c not in self._gone_images]
        if staying:
            return ObjectResult(planned, Outcome.KEPT, f"a child image stays ({short_id(staying[0])}), so it stays "
                                "too, with its tags")
        current = self.engine.image_state(planned.id)
        if current is None:
            result = ObjectResult(planned, Outcome.GONE, "already deleted")
            return self._hidden_parents(planned, result) if planned.hidden_parents else result
        new_tags = sorted(set(current.repo_tags) - set(planned.names))
        if new_tags:
            return ObjectResult(planned, Outcome.KEPT, "changed since the plan: now also tagged " + ", ".join(new_tags))
        repositories = {repository_of(name) for name in planned.names}
        new_digests = sorted(d for d in set(current.repo_digests) - self._digests.get(planned.id, frozenset())
                             if repository_of(d) not in repositories)
        if new_digests:  # pulled since, from another repository than its tags': in use elsewhere
            return ObjectResult(planned, Outcome.KEPT, "changed since the plan: now also referenced as "
                                + ", ".join(new_digests))
        if current.last_tag_time and (planned.reference_time is None or current.last_tag_time > planned.reference_time):
            # Same tags, newer tag time: tagged again (a rebuild that hit the cache, a `docker
            # tag`), so about to be used, and no longer as old as the plan thought.
            return ObjectResult(
                planned, Outcome.KEPT, f"changed since the plan: tagged again at {current.last_tag_time:%Y-%m-%d %H:%M:%S}"
            )
        # An image's last tag goes with the image itself, deleted by ID: the engine refuses that
        # (409, never forced) while any container uses the image, a child image stands on it,
        # or it has another tag, and its check is atomic, so asking first would only cost a
        # call. A dangling image is deleted the same way. The tags before the last, and digest
        # references of other repositories, are removed by name, which the engine does even
        # while a container uses the image: an image with any of those is checked first.
        users = (
            [c for c in self.engine.containers_of_image(planned.id) if c.id not in removed_containers]
            if len(current.repo_tags) > 1 or _digests_by_name(current)
            else []
        )
        if users:
            name = users[0].names[0] if users[0].names else users[0].short_id
            return ObjectResult(planned, Outcome.KEPT, f"changed since the plan: now used by container {name}")

        tried: list[str] = []
        try:
            result = self._untag_and_delete(planned, current, tried)
        except EngineError as error:
            if not tried:
                raise
            return self._failed_after_untags(planned, error, tried)
        if result.outcome in (Outcome.DELETED, Outcome.GONE) and planned.hidden_parents:
            return self._hidden_parents(planned, result)
        if result.outcome not in (Outcome.DELETED, Outcome.GONE) and planned.hidden_parents:
            with self._lock:
                self._steps_left.add(planned.id)
        return result

    def _hidden_parents(self, planned: PlannedObject, result: ObjectResult) -> ObjectResult:
        """The image is deleted: delete the untagged parents the plan names with it, nearest
        first, each re-checked (still untagged) and deleted by ID, so the engine refuses one
        that another child or a container holds; the first that stays ends the walk (the
        ones above are held through it). Best effort: what stays is reclaimed by a later run."""
        deleted = 0
        stayed = ""
        for parent in planned.hidden_parents:
            try:
                state = self.engine.image_state(parent)
                if state is None:
                    continue  # gone already: deleted with another child
                if state.repo_tags or state.repo_digests:
                    stayed = f"untagged parent {short_id(parent)} has a name now: {(*state.repo_tags, *state.repo_digests)[0]}"
                    break
                answer = self.engine.delete_image(parent)
            except EngineNotFound:
                continue
            except EngineConflict as error:
                # Another child, or a container, holds it: it stays, and so do the ones above.
                stayed = f"untagged parent {short_id(parent)} stays: {error.message}"
                break
            except EngineUnreachable as error:
                stayed = f"untagged parent {short_id(parent)} may or may not be deleted: engine unreachable: {error.cause}"
                break
            except EngineError as error:
                stayed = f"untagged parent {short_id(parent)} not deleted: {error}"
                break
            deleted += 1
            added = [name for name in _untagged_tags(answer) if "@" not in name]
            if added:  # tagged in the instant since the re-check
                with self._lock:
                    self._steps_left.add(planned.id)  # the walk ends here
                return replace(result, detail="; ".join(p for p in (result.detail, _with_parents(deleted)) if p),
                               unplanned=(*result.unplanned, *(f"tag {name} (put on the untagged parent image "
                                                              f"{short_id(parent)} since the re-check)"
                                                              for name in added)))
        if stayed:
            with self._lock:
                self._steps_left.add(planned.id)
        if not deleted and not stayed:
            return result
        detail = "; ".join(part for part in (result.detail, _with_parents(deleted) if deleted else "", stayed) if part)
        return replace(result, detail=detail)

    def _failed_after_untags(self, planned: PlannedObject, error: EngineError, tried: list[str]) -> ObjectResult:
        """An error after this run asked for tags to go: the result names the tags that went
        (the image may be whole, partly untagged, or gone); digest references tried are named
        in the detail only."""
        try:
            now = self.engine.image_state(planned.id)
        except (EngineError, EngineUnreachable):
            return ObjectResult(planned, Outcome.FAILED, f"{error}; which of {', '.join(tried)} went is not known")
        if now is None:
            return ObjectResult(planned, Outcome.DELETED, f"deleted, although the engine answered: {error}",
                                tuple(t for t in tried if "@" not in t))
        gone = tuple(name for name in tried if name not in now.repo_tags and name not in now.repo_digests)
        if gone:
            return ObjectResult(planned, Outcome.PARTIAL, f"removed {', '.join(gone)}, then: {error}",
                                tuple(t for t in gone if "@" not in t))
        return ObjectResult(planned, Outcome.FAILED, str(error))

    def _untag_and_delete(self, planned: PlannedObject, current: ImageState, tried: list[str]) -> ObjectResult:
        """Remove the tags before the last by name, and the digest references of other
        repositories than the last tag's, then delete the image by ID (and with it its last tag
        and the digest references of its repository).

        By ID, not by its last tag's name: ``DELETE /images/x:1`` acts on whatever ``x:1`` names
        when the engine gets it, so a tag moved to a new image since the re-check would lose
        the new image its tag, and the new image itself when that was its only tag. By ID the
        engine deletes the planned image or refuses; a tag added to it since the re-check makes
        it refuse, unless the image had no tag left. The engine deletes by ID only an image
        whose references are at most one tag, all in one repository (a pulled image has its
        tag and a digest of the same repository), hence the digests of other repositories
        first. No API call guards a tag added to a dangling image, a single tag replaced by
        another (a rename), or a tag before the last that moved since the re-check: the
        engine's answer shows the first two and a moved tag whose image it deleted, and the
        result names what went beyond the plan (``unplanned``). A tag moved to an image that
        keeps another tag is removed from it, and no answer tells (docs/reliability.md).
        """
        removed: list[str] = []  # tags
        dropped: list[str] = []  # digest references
        unplanned: list[str] = []
        *by_name, last = current.repo_tags or ("",)
        digests = _digests_by_name(current)
        expected = {last, *(d for d in current.repo_digests if d not in digests)} - {""}
        for reference in (*by_name, *digests):
            is_tag = reference in by_name
            tried.append(reference)
            try:
                answer = self.engine.untag(reference)
            except EngineNotFound:
                continue  # the tag went since the re-check; the image itself is checked below
            except EngineConflict as error:
                return self._refused(planned, removed, error, unplanned, dropped)
            if not _untagged(answer, reference) and not _deleted(answer, planned.id):
                # An answer that names neither the tag nor the image (a proxy's, say): look.
                now = self.engine.image_state(planned.id)
                if now is not None and reference in (*now.repo_tags, *now.repo_digests):
                    outcome = Outcome.PARTIAL if removed or dropped else Outcome.FAILED
                    return ObjectResult(planned, outcome, f"the engine answered the untag of {reference} without "
                                        "untagging it", tuple(removed), tuple(unplanned))
            (removed if is_tag else dropped).append(reference)
            if is_tag:
                # One worker per planned image: its list is its own; setdefault is atomic.
                self._by_name.setdefault(planned.id, []).append(reference)
            if _deleted(answer, planned.id):  # its other references went since the re-check
                return ObjectResult(planned, Outcome.DELETED, "", tuple(removed), tuple(unplanned))
            # The image keeps its last tag, so this untag deleted no layer of it: anything the
            # answer deleted is another image's, one the tag had moved to since the re-check.
            stray = _deleted_ids(answer)
            if stray:
                if is_tag:
                    removed.remove(reference)  # removed from the image it had moved to, not from this one
                unplanned.append(f"image {short_id(stray[0])} (the untag of {reference} deleted it: the tag had "
                                 "moved to it since the re-check)")

        if last:
            tried.append(last)
        try:
            answer = self.engine.delete_image(planned.id)
        except EngineNotFound:
            if not removed and not dropped:
                return ObjectResult(planned, Outcome.GONE, "already deleted", (), tuple(unplanned))
            return ObjectResult(planned, Outcome.DELETED, "", tuple(removed), tuple(unplanned))
        except EngineConflict as error:
            return self._refused(planned, removed, error, unplanned, dropped)
        # The engine names the image it deleted. An answer that does not (a proxy's, say) is
        # checked: the image is deleted only if it is no longer there.
        if not _deleted(answer, planned.id) and self.engine.image_state(planned.id) is not None:
            outcome = Outcome.PARTIAL if removed or dropped else Outcome.FAILED
            return ObjectResult(planned, outcome, "the engine answered the deletion without deleting: the "
                                "image is still there", tuple(removed), tuple(unplanned))
        # The engine's answer names the references that went with the image: its last tag,
        # unless that moved to another image since the re-check, and its digests; any other
        # was added to it in that instant. An answer that names nothing (a proxy's) tells
        # nothing: the image is gone, and its last tag most likely with it.
        untagged = _untagged_tags(answer)
        for reference in untagged:
            if any(_untagged([{"Untagged": reference}], name) for name in expected):
                if last and _untagged([{"Untagged": reference}], last):
                    removed.append(last)
                continue
            if "@" in reference:
                continue  # a digest: it names this image's content, so it went with it by right
            removed.append(reference)
            unplanned.append(f"tag {reference} (added to the image since the re-check)")
        if last and not untagged and not _deleted(answer, planned.id):
            removed.append(last)
        return ObjectResult(planned, Outcome.DELETED, "", tuple(removed), tuple(unplanned))

    def _failed(self, planned: PlannedObject, error: EngineError) -> ObjectResult:
        """The engine answered with an error that is no refusal (a 500, an unreadable answer).

        Look again: gone all the same (another prune got there first and the engine said 500,
        or it deleted and then answered badly) is "gone"; anything else failed.
        """
        try:
            if planned.kind is Kind.CONTAINER:
                present = self.engine.container_state(planned.id) is not None
            elif planned.kind is Kind.IMAGE:
                present = self.engine.image_state(planned.id) is not None
            elif planned.kind is Kind.VOLUME:
                present = self.engine.volume_exists(planned.id)
            else:
                present = True  # a cache record cannot be looked up alone
        except (EngineError, EngineUnreachable):
            present = True
        if not present:
            return ObjectResult(planned, Outcome.GONE, f"gone, although the engine answered: {error}")
        return ObjectResult(planned, Outcome.FAILED, str(error))

    @staticmethod
    def _refused(planned: PlannedObject, removed: list[str], error: EngineConflict,
                 unplanned: list[str] | None = None, dropped: list[str] | None = None) -> ObjectResult:
        # What this run removed before the refusal: tags, and digest references (no tags, so
        # not in removed_tags, but the image lost them all the same).
        gone = [*removed, *(dropped or ())]
        if gone:
            return ObjectResult(
                planned,
                Outcome.PARTIAL,
                f"removed {', '.join(gone)}, then the engine refused: {error.message}",
                tuple(removed),
                tuple(unplanned or ()),
            )
        return ObjectResult(planned, Outcome.KEPT, f"engine refused: {error.message}", (), tuple(unplanned or ()))

    def _build_cache(self, planned: PlannedObject) -> ObjectResult:
        for attempt in range(BUSY_RETRIES + 1):
            try:
                deleted, _ = self.engine.prune_build_cache_record(planned.id)
            except EngineBusy as error:
                if attempt == BUSY_RETRIES:
                    return ObjectResult(planned, Outcome.KEPT, f"engine busy with another prune: {error.message}")
                self.wait(min(0.5 * 2**attempt, 8.0))
                continue
            if deleted:
                return ObjectResult(planned, Outcome.DELETED)
            return ObjectResult(
                planned, Outcome.KEPT, "not pruned by the engine: in use by a build or already gone"
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _volume(self, planned: PlannedObject) -> ObjectResult:
        if not self.engine.volume_exists(planned.id):
            return ObjectResult(planned, Outcome.GONE, "already removed")
        try:
            self.engine.remove_volume(planned.id)
        except EngineNotFound:
            return ObjectResult(planned, Outcome.GONE, "already removed")
        except EngineConflict as error:
            return ObjectResult(planned, Outcome.KEPT, f"engine refused: {error.message}")
        return ObjectResult(planned, Outcome.DELETED)

    # -- audit --------------------------------------------------------------------------

    def _audit(self, plan: Plan) -> tuple[AuditFinding, ...]:
        """Check that every object the plan kept is still there, with every tag it had."""
        after = self.engine.snapshot()
        images = {i.id: set(i.repo_tags) for i in after.images}
        tags_now = {tag for tags in images.values() for tag in tags}
        records = {r.id for r in after.build_cache}
        volumes = {v.name for v in after.volumes}
        # Objects busy at the snapshot may go by themselves, never by this run: a build drops
        # its temporary cache records when it ends, a `--rm` container removes itself. The
        # engine refuses to let sparkjoy remove either (in use; not stopped, never forced).
        busy = {r.id for r in plan.snapshot.build_cache if r.in_use}
        busy |= {c.id for c in plan.snapshot.containers if not c.state.stopped}
        findings = []
        for kept in plan.kept:
            if kept.id in busy:
                continue
            if kept.kind is Kind.IMAGE:
                if kept.id not in images:
                    # The engine lists no untagged image with a child: one that got a child
                    # since (a classic build's next step) is still there, unlisted.
                    now = self.engine.image_state(kept.id)
                    if now is None:
                        findings.append(AuditFinding(kept.kind, kept.id, "kept image is gone"))
                        continue
                    tags_now |= set(now.repo_tags)
                # A tag now on another image was moved there (a build, `docker tag`), not removed by the run.
                if missing := set(kept.names) - tags_now:
                    findings.append(AuditFinding(kept.kind, kept.id, "kept image lost tags " + ", ".join(sorted(missing))))
            # Not containers: sparkjoy removes one only when its plan deletes it, by its ID and
            # never with its volumes, and nothing it deletes takes one with it. A kept container
            # that is gone was removed by its owner (a classic build's step, an exited --rm).
            elif kept.kind is Kind.VOLUME and kept.id not in volumes:
                findings.append(AuditFinding(kept.kind, kept.id, "kept volume is gone"))
            elif kept.kind is Kind.BUILD_CACHE and kept.id not in records:
                findings.append(AuditFinding(kept.kind, kept.id, "kept build-cache record is gone"))
        return tuple(findings)


def _with_parents(count: int) -> str:
    return f"with {count} untagged parent image{'' if count == 1 else 's'} (a classic build's steps)"


def _digests_by_name(image: ImageState) -> tuple[str, ...]:
    """The image's digest references the engine's delete by ID would refuse to remove with it:
    those of other repositories than its last tag's (or, untagged, than its first digest's)."""
    names = image.repo_tags or image.repo_digests
    if not names or not image.repo_digests:
        return ()
    keep = repository_of(names[-1] if image.repo_tags else names[0])
    return tuple(d for d in image.repo_digests if repository_of(d) != keep)


def _untagged(answer: list[dict], tag: str) -> bool:
    """True when the engine's answer to DELETE /images/{tag} says it removed that tag (it
    names it as given, or normalised with docker.io/ or :latest)."""
    names = {tag, f"docker.io/{tag}", f"docker.io/library/{tag}", f"{tag}:latest"}
    return any(isinstance(entry, dict) and entry.get("Untagged") in names for entry in answer or [])


def _deleted(answer: list[dict], image_id: str) -> bool:
    return any(isinstance(entry, dict) and entry.get("Deleted") == image_id for entry in answer or [])


def _deleted_ids(answer: list[dict]) -> list[str]:
    """What the engine's deletion answer names as deleted: images, then their layers."""
    return [entry["Deleted"] for entry in answer or []
            if isinstance(entry, dict) and isinstance(entry.get("Deleted"), str)]


def _untagged_tags(answer: list[dict]) -> list[str]:
    """The tags the engine's deletion answer names as removed."""
    return [entry["Untagged"] for entry in answer or []
            if isinstance(entry, dict) and isinstance(entry.get("Untagged"), str)]
