"""Images are deleted several at a time (Executor.workers), children always before parents.

On the real engine: a classic-built chain (base, child, grandchild, linked through
intermediate images) beside many independent images, all planned for deletion. A parent
deleted before its child would be refused by the engine (409, "image has dependent child
images") and reported as kept: every image must be deleted, none refused, and the audit
clean. Parallel and one-at-a-time runs must delete the same set.
"""

from __future__ import annotations

import pytest

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
