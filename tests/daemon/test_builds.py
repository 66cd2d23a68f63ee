"""No prune while a build runs on the engine, whoever runs it; `sparkjoy build` announces one."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from sparkjoy.daemon import Client
from sparkjoy.daemon.events import EventInterpreter, observe
from sparkjoy.policy import Policy
from tests.daemon.support import RunningDaemon
from tests.fixtures import BUSYBOX_BASE, StepGate, build, start_build, wait_until

SPARKJOY = str(Path(sys.executable).with_name("sparkjoy"))


@pytest.mark.parametrize("buildkit", [True, False], ids=["BuildKit", "classic"])
def test_a_prune_asked_for_during_a_build_waits_until_the_build_finishes(clean_engine, tmp_path, buildkit) -> None:
    engine = clean_engine
    gate = StepGate()
    with RunningDaemon(engine, tmp_path) as daemon:
        with start_build(engine, BUSYBOX_BASE + gate.run_step() + "RUN echo done > /proof\n", "slow:1",
                         buildkit=buildkit) as running:
            wait_until(lambda: gate.waiting() or not running.running, timeout=120, what="the build's gated step")
            assert running.running, f"the build ended before its gated step:\n{running.output()}"
            # The engine shows a build once it runs a step: in-use cache records, or a step container.
            with closing(engine.client()) as client:
                def build_visible() -> bool:
                    if buildkit:
                        return any(r["InUse"] for r in client.df()["BuildCache"] or [])
                    return bool(daemon.supervisor.interpreter.classic_build_containers)

                wait_until(build_visible, timeout=60, what="the engine to show the build")
            daemon.supervisor.request_prune()
            daemon.wait_for(lambda: "waiting for" in daemon.supervisor.last_decision,
                            "the daemon to hold the prune back")
            assert daemon.supervisor.prunes == []
            assert ("BuildKit" if buildkit else "classic build") in daemon.supervisor.last_decision
            assert running.running
            gate.open()
            running.wait()
        summary = daemon.wait_for(lambda: daemon.supervisor.prunes, "the prune after the build")[0]

    assert summary.trigger == "request"


class _NoAnswers:
    """A resolver for a replay: the build's containers are gone by then."""

    def image_of_container(self, container_id):
        return None

    def image_id(self, ref):
        return None

    def image(self, image_id):
        return None


def test_a_classic_build_is_in_progress_from_its_first_step_until_its_tag_between_steps_too(engine) -> None:
    """The engine's own events of a classic build, replayed: no moment between two steps
    (no step container exists) reads as "no build", where a prune could remove the image
    the next step starts from."""
    started = time.time()  # the engine runs on this host: one clock
    fresh = time.time_ns()  # no step after the COPY is cached: each RUN gets its container
    build(engine, BUSYBOX_BASE + f"COPY busybox /copied-{fresh}\nRUN echo one > /one\nRUN echo two > /two\n",
          "gapless:1", buildkit=False)
    with closing(engine.client()) as client:
        events = list(client.events(since=started, until=time.time() + 1, decode=True))
    observations = [o for o in (observe(e) for e in events) if o is not None]
    steps = [o for o in observations if o.action == "container:create"]
    assert len(steps) >= 2, f"expected a container per RUN step, the engine showed {len(steps)}"

    clock_at = [0.0]
    interpreter = EventInterpreter(_NoAnswers(), Policy(), lambda: clock_at[0])
    first = observations.index(steps[0])
    tag = next(i for i, o in enumerate(observations) if o.action == "image:tag")
    for index, observation in enumerate(observations[:tag]):
        interpreter.learn([observation])
        if index >= first:
            assert interpreter.classic_build_in_progress(), f"no build in progress after {observation.action}"
    interpreter.learn([observations[tag]])
    assert not interpreter.classic_build_in_progress(), "the build's tag ends it"


def test_sparkjoy_build_holds_prunes_back_while_its_command_runs_and_exits_with_its_code(clean_engine, tmp_path) -> None:
    go = tmp_path / "go"
    with RunningDaemon(clean_engine, tmp_path) as daemon:
        host, port = daemon.supervisor.http.address
        command = [SPARKJOY, "build", "--listen", f"{host}:{port}", "--id", "test-build", "--",
                   "sh", "-c", f'while [ ! -e "{go}" ]; do sleep 0.05; done; exit 3']
        build = subprocess.Popen(command, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
        try:
            daemon.wait_for(lambda: "test-build" in daemon.supervisor.announced_builds, "the build announced")
            Client(f"{host}:{port}").prune_now()
            daemon.wait_for(lambda: "1 announced" in daemon.supervisor.last_decision, "the prune held back")
            assert daemon.supervisor.prunes == []

            go.touch()
            assert build.wait(timeout=60) == 3
        finally:
            if build.poll() is None:
                build.kill()
        daemon.wait_for(lambda: daemon.supervisor.prunes, "the prune after the build")
        assert daemon.supervisor.announced_builds == {}


def test_sparkjoy_build_without_a_daemon_warns_and_still_runs_the_command(tmp_path) -> None:
    result = subprocess.run([SPARKJOY, "build", "--listen", "127.0.0.1:9", "--", "sh", "-c", "exit 7"],
                            capture_output=True, text=True, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                            timeout=60)

    assert result.returncode == 7
    assert "no sparkjoy daemon answered" in result.stderr


def test_sparkjoy_build_of_a_missing_command_exits_127(tmp_path) -> None:
    result = subprocess.run([SPARKJOY, "build", "--listen", "127.0.0.1:9", "--", "no-such-command-xyz"],
                            capture_output=True, text=True, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                            timeout=60)

    assert result.returncode == 127
    assert "cannot run no-such-command-xyz" in result.stderr


def test_the_library_client_announces_a_build_for_the_duration_of_a_block(engine, tmp_path) -> None:
    with RunningDaemon(engine, tmp_path) as daemon:
        client = Client("%s:%d" % daemon.supervisor.http.address)
        with client.build("from-a-library") as build_id:
            assert build_id == "from-a-library"
            daemon.wait_for(lambda: "from-a-library" in daemon.supervisor.announced_builds, "the announcement")
        daemon.wait_for(lambda: daemon.supervisor.announced_builds == {}, "the build to be finished")
        assert daemon.supervisor.build_finished_since_start


def test_with_scope_from_builds_only_repositories_a_dev_tool_claimed_are_pruned(clean_engine, tmp_path) -> None:
    from datetime import datetime, timedelta, timezone

    from sparkjoy.state import State
    from tests.daemon.support import image_exists
    from tests.fixtures import import_image

    engine = clean_engine
    mine = import_image(engine, 1000, "mine/app:1", tag_on_load=True)
    theirs = import_image(engine, 1000, "theirs/app:1", tag_on_load=True)
    seeded = State.open(tmp_path / "state.db", engine.host)
    seeded.ensure_seen([mine, theirs], datetime.now(timezone.utc) - timedelta(days=2))
    seeded.close()

    with RunningDaemon(engine, tmp_path, scope_from_builds=True) as daemon:
        daemon.supervisor.request_prune()
        daemon.wait_for(lambda: not daemon.supervisor.prune_requested and daemon.supervisor.pruned_since_start,
                        "the prune with nothing claimed")
        assert image_exists(engine, mine) and image_exists(engine, theirs)

        with Client("%s:%d" % daemon.supervisor.http.address).build("tool-build", repos=["mine/*"]):
            daemon.wait_for(lambda: daemon.supervisor.state.claims() == ("mine/*",), "the claim")
        summary = daemon.prune_and_wait()

    assert summary.removed["image"] == 1
    assert not image_exists(engine, mine)
    assert image_exists(engine, theirs), "another project's image is never touched"
    assert State.open(tmp_path / "state.db", engine.host).claims() == ("mine/*",), "claims survive a restart"


def test_sparkjoy_notify_prune_makes_the_running_daemon_prune(engine, tmp_path) -> None:
    with RunningDaemon(engine, tmp_path) as daemon:
        result = subprocess.run([SPARKJOY, "notify", "prune", "--listen", "%s:%d" % daemon.supervisor.http.address],
                                capture_output=True, text=True, env={"HOME": str(tmp_path)}, timeout=60)
        assert result.returncode == 0, result.stderr
        (summary,) = daemon.wait_for(lambda: daemon.supervisor.prunes, "the prune asked for")

    assert summary.trigger == "request"


def test_sparkjoy_notify_without_a_daemon_exits_3(tmp_path) -> None:
    result = subprocess.run([SPARKJOY, "notify", "prune", "--listen", "127.0.0.1:9"],
                            capture_output=True, text=True, env={"HOME": str(tmp_path)}, timeout=60)

    assert result.returncode == 3
    assert "no sparkjoy daemon answered" in result.stderr


def test_a_build_announced_and_never_finished_holds_a_prune_back_only_until_the_wait_limit(
        clean_engine, tmp_path: Path, caplog) -> None:
    """A dev tool that said "build starting" and then died never blocks pruning for good: the
    daemon waits (and says why), then after build_wait_limit stops waiting for that build,
    says so, and prunes."""
    import logging

    from tests.daemon.support import image_exists
    from tests.fixtures import import_image

    engine = clean_engine
    old = import_image(engine, 10_000, "abandoned/old:1")
    with caplog.at_level(logging.INFO, logger="sparkjoy"):
        with RunningDaemon(engine, tmp_path, max_age="-1s", build_wait_limit="3s") as daemon:
            Client("%s:%d" % daemon.supervisor.http.address).build_started("stuck-build")
            daemon.supervisor.request_prune()
            daemon.wait_for(lambda: "stuck-build" in caplog.text and "announced as starting" in caplog.text,
                            "the announcement")
            daemon.wait_for(lambda: daemon.supervisor.waiting_since is not None, "the prune to wait")
            assert not daemon.supervisor.prunes and image_exists(engine, old), "no prune while a build runs"
            (summary,) = daemon.wait_for(lambda: daemon.supervisor.prunes, "the prune after the wait limit",
                                         timeout=30)
    assert summary.removed["image"] >= 1 and not image_exists(engine, old)
    assert "build stuck-build was announced 3s ago and never finished; no longer waiting for it" in caplog.text
    # The gauge follows (it stayed at 1 once); and the dropped id is no build in progress any more.
    assert daemon.supervisor.metrics.builds_in_flight._value.get() == 0
    assert daemon.supervisor.build_finished("stuck-build") is False


def test_a_finish_for_a_build_never_announced_is_refused_and_said(engine, tmp_path) -> None:
    """From a new user's trial: `notify build-finish typo-42` exited 0 in silence, and the real
    build went on holding prunes back until build_wait_limit."""
    with RunningDaemon(engine, tmp_path) as daemon:
        address = "%s:%d" % daemon.supervisor.http.address
        started = Client(address).build_started("ci-42")
        result = subprocess.run([SPARKJOY, "notify", "build-finish", "typo-42", "--listen", address],
                                capture_output=True, text=True, env={"HOME": str(tmp_path)}, timeout=60)
        assert result.returncode == 1, result.stderr
        assert "refused /build/finish (404): no build 'typo-42' is in progress here" in result.stderr
        daemon.wait_for(lambda: "ci-42" in daemon.supervisor.announced_builds, "the real build announced")

        done = subprocess.run([SPARKJOY, "notify", "build-finish", started, "--listen", address],
                              capture_output=True, text=True, env={"HOME": str(tmp_path)}, timeout=60)
        assert done.returncode == 0, done.stderr
        daemon.wait_for(lambda: daemon.supervisor.announced_builds == {}, "the real build finished")
        again = subprocess.run([SPARKJOY, "notify", "build-finish", started, "--listen", address],
                               capture_output=True, text=True, env={"HOME": str(tmp_path)}, timeout=60)
        assert again.returncode == 1 and "finished already" in again.stderr


def test_a_second_build_with_the_id_of_one_in_progress_is_refused_and_builds_unannounced(engine, tmp_path) -> None:
    """A review's case: two `sparkjoy build --id nightly` at once were one build to the daemon,
    and the first to finish released both (the second's finish then got 404)."""
    from sparkjoy.daemon import DaemonRefused

    with RunningDaemon(engine, tmp_path) as daemon:
        address = "%s:%d" % daemon.supervisor.http.address
        assert Client(address).build_started("nightly") == "nightly"
        with pytest.raises(DaemonRefused, match="a build 'nightly' is in progress already"):
            Client(address).build_started("nightly")
        result = subprocess.run([SPARKJOY, "build", "--id", "nightly", "--listen", address, "--", "sh", "-c", "exit 4"],
                                capture_output=True, text=True, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                                timeout=60)
        assert result.returncode == 4
        assert "in progress already" in result.stderr and "running the build anyway" in result.stderr
        Client(address).build_finished("nightly")
        daemon.wait_for(lambda: daemon.supervisor.announced_builds == {}, "the first build finished")
        assert Client(address).build_started("nightly") == "nightly"  # free again


def test_a_prune_asked_of_a_disabled_daemon_is_refused_and_said(engine, tmp_path, caplog) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="sparkjoy"):
        with RunningDaemon(engine, tmp_path, disable=True) as daemon:
            result = subprocess.run([SPARKJOY, "notify", "prune", "--listen", "%s:%d" % daemon.supervisor.http.address],
                                    capture_output=True, text=True, env={"HOME": str(tmp_path)}, timeout=60)
            assert result.returncode == 1, result.stderr
            assert "pruning is disabled (daemon.disable)" in result.stderr
            daemon.supervisor.request_prune()  # SIGUSR1's way: logged, not done
            daemon.wait_for(lambda: "a prune was asked for, but pruning is disabled" in caplog.text, "the warning")
    assert daemon.supervisor.prunes == []


def test_a_refused_finish_claims_no_repository(engine, tmp_path) -> None:
    """A review's case: POST /build/finish recorded its repos before checking the id, so a
    finish refused with 404 still claimed repositories under scope_from_builds."""
    import json
    import urllib.error
    import urllib.request

    with RunningDaemon(engine, tmp_path) as daemon:
        address = "%s:%d" % daemon.supervisor.http.address
        request = urllib.request.Request(f"http://{address}/build/finish", method="POST",
                                         data=json.dumps({"id": "nope", "repos": ["refused/*"]}).encode(),
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 404
        Client(address).build_started("real", repos=["accepted/*"])  # queued after anything the 404 queued
        daemon.wait_for(lambda: "accepted/*" in daemon.supervisor.state.claims(), "the real claim")
        assert "refused/*" not in daemon.supervisor.state.claims()
