"""The executor deletes images several at a time; children always go before their parents.

`Executor._groups` and `_batches` are pure (plan in, lists out); the real deletions in parallel are
tested on the engine in tests/integration/test_parallel_deletes.py.
"""

from __future__ import annotations

import threading
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from sparkjoy.engine.base import ImageState
from sparkjoy.errors import EngineUnreachable
from sparkjoy.executor import DELETE_BATCH, Executor, Outcome
from sparkjoy.model import Kind
from sparkjoy.planner import plan
from sparkjoy.policy import Policy

from tests.unit.builders import NOW, ago, container, image, snapshot

EVERYTHING_OLD = Policy(max_age=timedelta(seconds=-1), keep_recent=0)


@st.composite
def families(draw):
    """Images where each may stand on an earlier one (a classic builder's chains), some
    stopped containers, in a random listing order."""
    count = draw(st.integers(1, 40))
    images = []
    for index in range(count):
        parent = draw(st.one_of(st.just(""), st.integers(0, index - 1).map(lambda p: f"sha256:{p:04}")
                                if index else st.just("")))
        tags = draw(st.sampled_from([(), (f"app:{index}",), (f"app:{index}", f"other:{index}")]))
        images.append(image(f"sha256:{index:04}", *tags, tagged=ago(days=1), parent=parent))
    containers = [container(f"c{n}", images[n % count].id, state="exited", finished=ago(days=1))
                  for n in range(draw(st.integers(0, 3)))]
    return snapshot(images=draw(st.permutations(images)), containers=containers)


@settings(max_examples=500, deadline=None)
@given(families(), st.integers(1, 9), st.integers(1, 20))
def test_groups_keep_plan_order_and_never_hold_an_image_with_its_parent(snap, workers, batch_size) -> None:
    the_plan = plan(snap, EVERYTHING_OLD, now=NOW)
    executor = Executor(engine=None, workers=workers, batch_size=batch_size)  # type: ignore[arg-type]
    groups = executor._groups(the_plan)

    assert [p for group in groups for p in group] == list(the_plan.deletions)
    parent_of = {i.id: i.parent_id for i in snap.images}
    done: set[str] = set()
    for group in groups:  # what the workers may hold at once
        assert len(group) == 1 or all(p.kind is Kind.IMAGE for p in group), "only images go at once"
        assert workers > 1 or len(group) == 1
        ids = {p.id for p in group}
        for planned in group:
            if planned.kind is Kind.IMAGE:
                assert parent_of[planned.id] not in ids, "a parent in the group of its child"
                children = {i for i, p in parent_of.items() if p == planned.id} & {d.id for d in the_plan.deletions}
                assert children <= done, "a parent before one of its children"
        done |= ids
    # Reported a batch at a time: each group cut in order, no batch across two groups.
    batches = executor._batches(the_plan)
    assert [b for group in groups for b in (group[i:i + batch_size] for i in range(0, len(group), batch_size))] \
        == batches
    assert all(1 <= len(batch) <= batch_size for batch in batches)


def test_independent_images_go_in_one_group_and_a_chain_one_link_at_a_time() -> None:
    snap = snapshot(images=[image("sha256:base", "base:1", tagged=ago(days=1)),
                            image("sha256:mid", tagged=ago(days=1), parent="sha256:base"),
                            image("sha256:top", "top:1", tagged=ago(days=1), parent="sha256:mid"),
                            *[image(f"sha256:solo{n}", f"solo:{n}", tagged=ago(days=1)) for n in range(5)]])
    groups = Executor(engine=None, workers=8)._groups(plan(snap, EVERYTHING_OLD, now=NOW))  # type: ignore[arg-type]
    as_ids = [[p.id for p in group] for group in groups]
    position = {object_id: n for n, batch in enumerate(as_ids) for object_id in batch}
    assert position["sha256:top"] < position["sha256:mid"] < position["sha256:base"]
    assert len(as_ids) == 3, as_ids


def test_many_independent_images_are_reported_in_batches_of_at_most_the_batch_size() -> None:
    """A batch's results are checked for moved tags and reported as it ends: 40 images are not
    one batch (they were: -v showed nothing until the last deletion, a Ctrl-C seemed to come too
    late, and the events of thousands of untags outran the engine's buffer)."""
    snap = snapshot(images=[image(f"sha256:solo{n:02}", f"solo:{n}", tagged=ago(days=1)) for n in range(40)])
    batches = Executor(engine=None, workers=8)._batches(plan(snap, EVERYTHING_OLD, now=NOW))  # type: ignore[arg-type]
    assert [len(batch) for batch in batches] == [DELETE_BATCH, DELETE_BATCH, 40 - 2 * DELETE_BATCH]


class _LostAfterTheFirst:
    """An engine (the Engine protocol) whose images have two tags each. The third image's
    re-check finds the engine gone, and the second image's deletion waits for that: the first
    batch's results are taken after a worker on the next batch lost the engine."""

    def __init__(self, lost_on: str, waits: str):
        self.lost_on, self.waits = lost_on, waits
        self.lost = threading.Event()

    def usage(self):
        return 0

    def image_state(self, image_id):
        if image_id == self.lost_on:
            self.lost.set()
            raise EngineUnreachable("unix:///gone.sock", "connection refused", "start the engine")
        return ImageState(image_id, (f"app/{image_id[7:]}:a", f"app/{image_id[7:]}:b"))

    def containers_of_image(self, image_id):
        return []

    def untag(self, tag):
        return [{"Untagged": tag}]

    def delete_image(self, image_id):
        if image_id == self.waits:
            assert self.lost.wait(30), "the third image's re-check never came"
        return [{"Untagged": f"app/{image_id[7:]}:b"}, {"Deleted": image_id}]

    def tags_put(self, names, within_s):
        raise EngineUnreachable("unix:///gone.sock", "connection refused", "start the engine")


def test_a_batch_whose_moved_tags_go_unchecked_because_a_later_one_lost_the_engine_says_so() -> None:
    """Untags by name are checked for moved tags per batch; when the engine was lost by then
    (by a worker already on the next batch), the batch's results say the check was not made,
    never read as checked (the check was skipped without a word)."""
    snap = snapshot(images=[image(f"sha256:i{n}", f"app/i{n}:a", f"app/i{n}:b", tagged=ago(days=1, minutes=n))
                            for n in range(4)])
    the_plan = plan(snap, EVERYTHING_OLD, now=NOW)
    order = [p.id for p in the_plan.deletions]
    # Two workers: one deletes the first image and goes on to the third, which finds the
    # engine gone, while the other's deletion of the second waits for exactly that.
    engine = _LostAfterTheFirst(lost_on=order[2], waits=order[1])
    result = Executor(engine, workers=2, batch_size=2).execute(the_plan)  # type: ignore[arg-type]

    first_batch = [r for r in result.results if r.planned.id in order[:2]]
    assert [r.outcome for r in first_batch] == [Outcome.DELETED, Outcome.DELETED]
    for r in first_batch:
        assert "whether a tag moved to another image just before its untag is not known" in r.detail, r
    assert result.stopped_early.startswith("engine unreachable")
