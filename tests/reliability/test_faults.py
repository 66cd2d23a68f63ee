"""The one-shot prune under engine faults, through the fault proxy, against the real engine.

Every case checks the same four things: the exit code is the documented one (0 success,
1 failure or partial failure, 3 engine unreachable), each planned object's result says what
happened to it, nothing outside the plan is gone, and no traceback reaches the user.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest

from sparkjoy.errors import ExitCode
from sparkjoy.executor import Outcome
from sparkjoy.model import Kind

from tests.faultproxy import (
    Rule, api_version, cut_json, delay, drop, malformed_json, respond, slow_body, truncate,
)
from tests.reliability.support import (
    World, assert_no_traceback, inventory, library_prune, lost, make_world, planned_keys, prune_cli,
)


@dataclass(frozen=True)
class Case:
    name: str
    rules: Callable[[World], list[Rule]]
    exit_code: int
    # (image tag or "container0", expected result) pairs checked in the JSON report.
    expect: tuple[tuple[str, str], ...] = ()
    stderr: str = ""  # a phrase the error message must hold, when the run fails before deleting
    timeout: str = "30s"
    stopped_early: str = ""  # a phrase the report's stopped_early must hold


def _image(image_id: str) -> str:
    """The path of an image's deletion by ID: an image's last tag goes with it (see
    Executor._untag_and_delete); the tags before it are removed by name."""
    return rf"^/images/{image_id}$"


CONFLICT = {"message": "conflict: unable to remove repository reference (must force)"}

DURING_DELETION = [
    Case("409 on deleting an image keeps it, with the engine's reason",
         lambda w: [Rule("DELETE", _image(w.deletable_images[2]), respond(409, CONFLICT))],
         ExitCode.OK, (("old/app2:v1", "kept"), ("old/app3:v1", "deleted"))),
    Case("409 after the first of two tags is a partial failure",
         lambda w: [Rule("DELETE", _image(w.deletable_images[-1]), respond(409, CONFLICT))],
         ExitCode.FAILED, (("old/two:a", "partial"),)),
    Case("404 on removing a container means it is gone already",
         lambda w: [Rule("DELETE", rf"^/containers/{w.stopped_containers[0]}$", respond(404))],
         ExitCode.OK, (("container0", "gone"), ("old/app3:v1", "deleted"))),
    Case("500 on removing a container fails that container only, and its image stays",
         lambda w: [Rule("DELETE", rf"^/containers/{w.stopped_containers[0]}$", respond(500))],
         ExitCode.FAILED, (("container0", "failed"), ("old/app0:v1", "kept"), ("old/app3:v1", "deleted"))),
    Case("500 on deleting an image fails that image only",
         lambda w: [Rule("DELETE", _image(w.deletable_images[3]), respond(500))],
         ExitCode.FAILED, (("old/app3:v1", "failed"), ("old/app2:v1", "deleted"))),
    Case("an answer slower than the timeout fails that object only",
         lambda w: [Rule("DELETE", _image(w.deletable_images[3]), delay(4))],
         ExitCode.FAILED, (("old/app3:v1", "failed"), ("old/app2:v1", "deleted")), timeout="1s"),
    Case("a connection dropped during a deletion stops the run, the rest not attempted",
         lambda w: [Rule("DELETE", r"^/images/", drop(), nth=2)],
         ExitCode.FAILED, (("volume oldvol0", "not attempted"),), stopped_early="engine unreachable"),
    Case("malformed JSON in the re-check fails that image only",
         lambda w: [Rule("GET", rf"^/images/{w.deletable_images[3]}/json$", malformed_json(), nth=2)],
         ExitCode.FAILED, (("old/app3:v1", "failed"), ("old/app2:v1", "deleted"))),
    # The run's own untag did it: "deleted" (with the tag it removed), not "gone" (gone
    # before the run came to it).
    Case("a truncated answer to a deletion that happened is reported deleted, the run goes on",
         lambda w: [Rule("DELETE", _image(w.deletable_images[3]), truncate(0.5))],
         ExitCode.OK, (("old/app3:v1", "deleted"), ("old/app2:v1", "deleted"))),
    # Only an image with several tags is asked about: its first tag is removed by name, which
    # the engine does even while a container uses the image.
    Case("a garbled container list in the re-check keeps the image",
         lambda w: [Rule("GET", r"^/containers/json$", cut_json(0.3))],
         ExitCode.FAILED, (("old/two:a", "failed"), ("old/app3:v1", "deleted"))),
    Case("slow bodies everywhere still give a complete, correct run",
         lambda w: [Rule("GET", r"^/(system/df|images/.*/json)$", slow_body(chunk=512, interval=0.001))],
         ExitCode.OK, (("old/app3:v1", "deleted"), ("container0", "deleted"))),
    # `prune -f` measures the usage before from its snapshot's /system/df: the next one is after.
    Case("500 when measuring usage and auditing after the run is reported, deletions stand",
         lambda w: [Rule("GET", r"^/system/df$", respond(500), from_nth=2)],
         ExitCode.FAILED, (("old/app3:v1", "deleted"),), stopped_early="reclaimed space not measured: read disk usage"),
]

BEFORE_DELETION = [
    Case("500 on reading disk usage deletes nothing",
         lambda w: [Rule("GET", r"^/system/df$", respond(500))], ExitCode.FAILED, stderr="(500)"),
    Case("malformed JSON from disk usage deletes nothing",
         lambda w: [Rule("GET", r"^/system/df$", malformed_json())], ExitCode.FAILED, stderr="bad answer"),
    Case("truncated JSON from disk usage deletes nothing",
         lambda w: [Rule("GET", r"^/system/df$", cut_json(0.5))], ExitCode.FAILED, stderr="bad answer"),
    Case("a broken container inspect in the snapshot deletes nothing",
         lambda w: [Rule("GET", rf"^/containers/{w.stopped_containers[0]}/json$", cut_json(0.5))],
         ExitCode.FAILED, stderr="bad answer"),
    Case("500 on an image inspect in the snapshot deletes nothing",
         lambda w: [Rule("GET", rf"^/images/{w.deletable_images[0]}/json$", respond(500))],
         ExitCode.FAILED, stderr="(500)"),
    Case("a ping slower than the timeout is an unreachable engine",
         lambda w: [Rule("GET", r"^/_ping$", delay(4))], ExitCode.UNREACHABLE, stderr="cannot reach", timeout="1s"),
    Case("a dropped connection at the first call is an unreachable engine",
         lambda w: [Rule("GET", r"^/version$", drop())], ExitCode.UNREACHABLE, stderr="cannot reach"),
    Case("a 404 on GET /version (a web server, not an engine, at the address) is an unreachable engine",
         lambda w: [Rule("GET", r"^/version$", respond(404))], ExitCode.UNREACHABLE,
         stderr="not as a Docker engine"),
    Case("409 on the ping is the engine refusing, not an unreachable engine",
         lambda w: [Rule("GET", r"^/_ping$", respond(409))], ExitCode.FAILED, stderr="(409)"),
    Case("503 on the ping (a socket proxy whose engine is down) is an unreachable engine",
         lambda w: [Rule("GET", r"^/_ping$", respond(503))], ExitCode.UNREACHABLE, stderr="cannot reach"),
    Case("an engine claiming a newer API than it speaks gives a clear error",
         lambda w: [Rule("GET", r"^/(_ping|version)$", api_version("1.99"))], ExitCode.FAILED,
         stderr="1.99"),
    Case("an engine claiming an API too old for the SDK gives a clear error",
         lambda w: [Rule("GET", r"^/(_ping|version)$", api_version("1.10"))], ExitCode.FAILED,
         stderr="1.24"),
    Case("an engine with no API version gives a clear error",
         lambda w: [Rule("GET", r"^/version$", cut_json(0.0))], ExitCode.FAILED, stderr="version"),
]


def _key_of(label: str, world: World, report: dict) -> tuple[str, str]:
    if label.startswith("container"):
        return "container", world.stopped_containers[int(label.removeprefix("container"))]
    if label.startswith("volume "):
        return "volume", label.removeprefix("volume ")
    [found] = [o for o in report["objects"] if o["kind"] == "image" and label in o["names"]]
    return "image", found["id"]


@pytest.mark.parametrize("case", DURING_DELETION + BEFORE_DELETION, ids=lambda c: c.name)
def test_a_cli_prune_under_a_fault_deletes_only_its_plan_and_says_what_happened(case, proxy, clean_engine, count):
    world = make_world(clean_engine)
    before = inventory(clean_engine)
    for rule in case.rules(world):
        proxy.add(rule)

    run = prune_cli(proxy.host, timeout_flag=case.timeout)

    after = inventory(clean_engine)
    assert_no_traceback(run)
    assert proxy.total_injected >= 1, "the fault never fired: the case tests nothing"
    if case in BEFORE_DELETION:
        problems = lost(before, after, set())
        count(objects_checked=before.size, objects_lost=len(problems), runs=1)
        assert not problems
        assert after == before
        assert run.stdout == ""
        assert run.stderr.startswith("sparkjoy: error: ") and case.stderr in run.stderr, run.stderr
    else:
        report = run.json
        problems = lost(before, after, run.planned_keys())
        count(objects_checked=before.size, objects_lost=len(problems), runs=1)
        assert not problems, (problems, run.stdout, run.stderr, proxy.log)
        results = run.results()
        for label, expected in case.expect:
            assert results[_key_of(label, world, report)] == expected, (label, report)
        # "deleted" is true, and every "not attempted" object is still there.
        for (kind, object_id), outcome in results.items():
            present = (kind, object_id) in after.keys()
            if outcome == "deleted":
                assert not present, (kind, object_id)
            if outcome in ("not attempted", "kept"):
                assert present, (kind, object_id, outcome)
        assert case.stopped_early in report.get("stopped_early", ""), report.get("stopped_early")
        stopped = report.get("stopped_early", "")
        if "engine unreachable" not in stopped and "audit not done" not in stopped:
            assert report["audit"] == [], report["audit"]  # the audit ran, and found nothing missing
    assert run.returncode == case.exit_code, (run.stdout, run.stderr)


def test_a_library_run_that_cannot_read_the_usage_before_deletes_nothing(proxy, clean_engine, count):
    """Executor.execute without ``usage_before`` reads it from the engine first (a plan made
    earlier, or a prune after a question): an engine that cannot say what it holds is no
    engine to delete from."""
    make_world(clean_engine)
    before = inventory(clean_engine)
    proxy.add(Rule("GET", r"^/system/df$", respond(500)))
    the_plan, result = library_prune(proxy.host, snapshot_host=clean_engine.host)
    assert the_plan.deletions and proxy.total_injected >= 1
    assert {r.outcome for r in result.results} == {Outcome.SKIPPED}, result.results
    assert "nothing deleted" in result.stopped_early and not result.ok
    assert inventory(clean_engine) == before
    count(objects_checked=before.size, objects_lost=0, runs=1)


def test_the_library_run_reports_every_object_under_a_storm_of_faults(proxy, clean_engine, count):
    """Several faults at once, through the Executor: every object gets exactly one result."""
    world = make_world(clean_engine, images=6, containers=3, volumes=2)
    before = inventory(clean_engine)
    proxy.add(Rule("DELETE", rf"^/containers/{world.stopped_containers[1]}$", respond(500)))
    proxy.add(Rule("DELETE", _image(world.deletable_images[4]), respond(409, CONFLICT)))
    proxy.add(Rule("DELETE", _image(world.deletable_images[5]), truncate(0.3)))
    proxy.add(Rule("GET", r"^/volumes/oldvol1$", respond(404)))
    proxy.add(Rule("GET", rf"^/images/{world.deletable_images[2]}/json$", malformed_json(), nth=1))

    the_plan, result = library_prune(proxy.host, snapshot_host=clean_engine.host)

    after = inventory(clean_engine)
    problems = lost(before, after, planned_keys(the_plan))
    count(objects_checked=before.size, objects_lost=len(problems), runs=1)
    assert not problems
    assert [r.planned.key for r in result.results] == [o.key for o in the_plan.deletions]
    by_id = {r.planned.id: r for r in result.results}
    assert by_id[world.stopped_containers[1]].outcome is Outcome.FAILED
    assert by_id[world.deletable_images[4]].outcome is Outcome.KEPT
    five = by_id[world.deletable_images[5]]  # deleted by ID, the answer truncated
    assert five.outcome is Outcome.DELETED and five.removed_tags == ("old/app5:v1",), five
    assert by_id[world.deletable_images[2]].outcome is Outcome.FAILED
    assert by_id["oldvol1"].outcome is Outcome.GONE
    assert by_id["oldvol0"].outcome is Outcome.DELETED
    assert result.audit == ()
    assert not result.ok
    assert result.count(Kind.IMAGE) >= 2
