"""Bytes under the kind whose SIZE holds them, everywhere: df's table and JSON, the dry run's
totals, the largest lists and the daemon's metrics (a shared cache record's bytes are an image
layer's); and warnings that print engine text escape it. The first three tests were written by
a review of the first version, and failed then."""

from __future__ import annotations

import json
import random
from datetime import timedelta

import pytest

from sparkjoy import cli, report
from sparkjoy.daemon.metrics import Metrics
from sparkjoy.daemon.watermarks import eviction_policy, plan_eviction
from sparkjoy.executor import ObjectResult, Outcome, RunResult
from sparkjoy.model import Kind
from sparkjoy.planner import plan
from sparkjoy.policy import Policy

from tests.unit.builders import NOW, ago, image, layers, record, snapshot
from tests.unit.test_planner_properties import build_policy, build_snapshot


def _buildkit_plan():
    # One old image whose only layer a shared BuildKit record holds too, plus a 50B private record.
    shot = snapshot(
        [image("i", "app:1", tagged=ago(days=40), layer_list=layers(("l", 300)))],
        build_cache=[record("shared", shared=True, size=300, last_used=ago(days=40)),
                     record("own", size=50, last_used=ago(days=40))],
    )
    return plan(shot, Policy(max_age=timedelta(days=30), keep_recent=0), now=NOW)


def test_metrics_reclaimed_per_kind_agree_with_reclaimable_per_kind_after_the_prune_that_frees_it() -> None:
    # 4d96e6c moved a shared record's freed bytes from Build cache to Images in df_summary, which
    # sets sparkjoy_reclaimable_bytes; record_run still adds each object's bytes under its own kind.
    # After a prune that deletes exactly the plan, reclaimed{kind} must equal what was reclaimable{kind}.
    the_plan = _buildkit_plan()
    metrics = Metrics(process_metrics=False)
    metrics.record_plan_usage(the_plan)
    result = RunResult(the_plan, tuple(ObjectResult(o, Outcome.DELETED) for o in the_plan.deletions), 0, 0)
    metrics.record_run(result, "interval", 1.0, 0.0)
    for kind in (Kind.IMAGE, Kind.BUILD_CACHE):
        reclaimable = metrics.reclaimable.labels(kind=kind.value)._value.get()
        reclaimed = metrics.reclaimed_bytes.labels(kind=kind.value)._value.get()
        assert reclaimed == reclaimable, (kind, reclaimable, reclaimed)
    # and no kind is said to have freed more than it holds (the 2161% the commit fixed in df)
    usage = metrics.disk_usage.labels(kind="build-cache")._value.get()
    assert metrics.reclaimed_bytes.labels(kind="build-cache")._value.get() <= usage


def test_the_unmatched_repo_warning_escapes_the_engines_repository_names(capsys: pytest.CaptureFixture) -> None:
    # Everything else that prints engine text goes through report.printable (tables, errors).
    shot = snapshot([image("i", "evil\x1b[2J\x1b]0;pwned\x07:1", tagged=ago(days=1))])
    cli._warn_unmatched_globs(Policy(repos=("shop",)), shot)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "warning: --repo shop (or the repos setting) matches no repository" in captured.err
    assert "\x1b" not in captured.err and "\x07" not in captured.err


def test_an_exclude_glob_that_matches_no_image_is_warned_of_and_one_that_matches_is_not(
        capsys: pytest.CaptureFixture) -> None:
    shot = snapshot([image("i", "redis:7", tagged=ago(days=1)), image("j", "evil\x1b[2J:1", tagged=ago(days=1))])
    cli._warn_unmatched_globs(Policy(exclude=("redis:*", "postgres:*")), shot)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "warning: --exclude postgres:* (or the exclude setting) matches no image on this engine" in captured.err
    assert "redis:*" not in captured.err
    assert "\x1b" not in captured.err


def listed(text: str, title: str) -> list[str]:
    section = text.split(f"\n{title}, largest")[1].split("\n\n")[0]
    return [line.split()[0] for line in section.splitlines()[2:]]


def test_the_largest_build_cache_records_are_those_the_build_cache_size_counts() -> None:
    # 7a3fbd6 sorts every kind by the object's SIZE. A shared record's size is an image layer's,
    # counted under Images ("N more is shared with images (counted there)"); on a BuildKit host the
    # shared ones are the big ones, so "Build cache, largest 3" listed only them and hid the private
    # records that make up all of the kind's SIZE and RECLAIMABLE (before 7a3fbd6, by UNIQUE, it showed them).
    shot = snapshot(
        [image(f"i{n}", f"app:{n}", tagged=ago(days=1), layer_list=layers((f"l{n}", 1000 + n))) for n in range(6)],
        build_cache=[record(f"s{n}", shared=True, size=1000 + n, last_used=ago(days=1)) for n in range(6)]
        + [record(f"p{n}", size=100 + n, last_used=ago(days=40)) for n in range(3)],
    )
    text = report.render_df(plan(shot, Policy(max_age=timedelta(days=30)), now=NOW), largest=3)
    assert "Build cache     9       303B      303B (100%)" in text
    assert listed(text, "Build cache") == ["p2", "p1", "p0"]


@pytest.mark.parametrize("seed", range(300))
def test_per_kind_reclaimable_adds_up_stays_within_size_and_json_matches(seed: int) -> None:
    # Random worlds (shared records of layer sizes, ambiguous matches, images without detail,
    # scoped policies) and the eviction plan made from them.
    rng = random.Random(seed)
    snap, memory = build_snapshot(rng.randint(0, 8), rng.randint(0, 4), rng.randint(0, 8), rng.randint(0, 3), seed)
    policy = build_policy(seed)
    eligible = plan(snap, eviction_policy(policy), memory, now=NOW)
    for the_plan in (plan(snap, policy, memory, now=NOW), plan_eviction(eligible, rng.randint(0, 10**7)).plan):
        usage, _ = report.df_summary(the_plan)
        assert sum(u.reclaimable for u in usage) == the_plan.predicted_bytes
        assert all(0 <= u.reclaimable <= u.bytes for u in usage), usage
        summary = report.df_json(the_plan)["summary"]
        assert [s["reclaimable_bytes"] for s in summary] == [u.reclaimable for u in usage]
        assert json.loads(report.dumps(report.df_json(the_plan)))["predicted_bytes"] == the_plan.predicted_bytes


def test_df_json_says_how_much_of_images_reclaimable_goes_with_the_cache_records() -> None:
    the_plan = _buildkit_plan()
    summary = {row["kind"]: row for row in report.df_json(the_plan)["summary"]}
    assert summary["image"]["reclaimable_bytes"] == summary["image"]["freed_with_cache_bytes"] == 300
    records = [o for o in report.df_json(the_plan)["objects"] if o["kind"] == "build-cache"]
    # Per kind, reconciled from the objects: the records' bytes are the cache's plus the layers'.
    assert sum(o["bytes"] for o in records) == (summary["build-cache"]["reclaimable_bytes"]
                                               + summary["image"]["freed_with_cache_bytes"])
    assert all(row["freed_with_cache_bytes"] == 0 for kind, row in summary.items() if kind != "image")
