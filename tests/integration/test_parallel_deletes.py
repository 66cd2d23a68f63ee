"""Images are deleted several at a time (Executor.workers), children always before parents.

On the real engine: a classic-built chain (base, child, grandchild, linked through
intermediate images) beside many independent images, all planned for deletion. A parent
deleted before its child would be refused by the engine (409, "image has dependent child
images") and reported as kept: every image must be deleted, none refused, and the audit
clean. Parallel and one-at-a-time runs must delete the same set.
"""

from __future__ import annotations

import threading

import pytest

from sparkjoy.engine.docker_engine import DockerEngine
from sparkjoy.executor import Executor, Outcome
from sparkjoy.model import Kind

from tests.fixtures import BUSYBOX_BASE, build, import_image
from tests.integration.support import EVERYTHING_OLD, deletion_ids, image_ids, make_plan, policy, sj


@pytest.mark.parametrize("workers", [8, 1])
def test_parallel_deletions_take_children_before_parents_and_delete_exactly_the_plan(clean_engine, workers):
    engine = clean_engine
    base = build(engine, BUSYBOX_BASE, "chain/base:1", buildkit=False)
    child = build(engine, "FROM chain/base:1\nRUN echo one > /one\n", "chain/child:1", buildkit=False)
    grandchild = build(engine, "FROM chain/child:1\nRUN echo two > /two\n", "chain/grandchild:1", buildkit=False)
    solos = [import_image(engine, 20_000, [f"solo/{n}:a", f"solo/{n}:b"] if n % 3 == 0 else f"solo/{n}:1")
             for n in range(24)]
    # Dangling once the tag moves on to the next one (a last-tag time of their own, so old).
    dangling = [import_image(engine, 20_000, "moving:latest") for _ in range(7)][:-1]

    adapter = sj(engine)
    the_plan = make_plan(engine, policy(max_age=EVERYTHING_OLD, keep_recent=0, build_cache=False), adapter=adapter)
    planned = deletion_ids(the_plan, Kind.IMAGE)
    assert {base, child, grandchild, *solos, *dangling} <= planned

    result = Executor(adapter, audit=True, workers=workers).execute(the_plan)

    assert result.audit == ()
    outcomes = {r.planned.id: (r.outcome, r.detail) for r in result.results if r.planned.kind is Kind.IMAGE}
    assert {i: o for i, o in outcomes.items() if o[0] is not Outcome.DELETED} == {}
    assert image_ids(engine).isdisjoint(planned)
    assert result.ok and result.reclaimed_bytes > 0
    # Reported in the plan's order, whatever order the workers finished in.
    assert [r.planned.id for r in result.results] == [p.id for p in the_plan.deletions]


class _Watching(DockerEngine):
    """Counts the images re-checked (each image's attempt starts with its image_state) and, at
    each read of the events for moved tags, how many were re-checked and reported by then."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rechecked = 0
        self.reported = 0
        self.checks: list[tuple[int, int, int]] = []  # (tags asked for, re-checked, reported)
        self._count = threading.Lock()

    def image_state(self, image_id):
        with self._count:
            self.rechecked += 1
        return super().image_state(image_id)

    def tags_put(self, names, within_s):
        self.checks.append((len(names), self.rechecked, self.reported))
        return super().tags_put(names, within_s)


def test_results_are_checked_and_reported_a_batch_at_a_time_with_the_workers_one_batch_ahead_at_most(
        clean_engine) -> None:
    """A group's images go to the workers a batch ahead of the results taken: each batch's untags
    by name are checked for moved tags on their own (a batch's events fit the engine's buffer),
    reported before the next batch's, and the workers never run more than one batch ahead."""
    images = [import_image(clean_engine, 5_000, [f"ahead/a:{n}", f"ahead/b:{n}"], seed=700 + n) for n in range(14)]
    engine = _Watching(DockerEngine.connect(host=clean_engine.host).connection)
    the_plan = make_plan(clean_engine, policy(max_age=EVERYTHING_OLD, keep_recent=0, build_cache=False), adapter=engine)
    assert deletion_ids(the_plan, Kind.IMAGE) == set(images)
    engine.rechecked = 0

    class Counting:
        def object_done(self, result) -> None:
            engine.reported += 1

    # More workers than two batches hold: workers free to run ahead would have re-checked
    # 8 images before the first batch of 2 is checked.
    size = 2
    result = Executor(engine, reporter=Counting(), workers=8, batch_size=size).execute(the_plan)

    assert result.ok, result.failures
    batches = -(-len(images) // size)
    assert len(engine.checks) == batches, engine.checks  # one read of the events per batch
    for index, (tags, rechecked, reported) in enumerate(engine.checks):
        assert tags == min(size, len(images) - index * size), "each batch's own untags by name, no more"
        assert reported == index * size, "a batch is checked before it is reported, after the one before"
        assert rechecked <= (index + 2) * size, f"the workers ran more than a batch ahead: {engine.checks}"
