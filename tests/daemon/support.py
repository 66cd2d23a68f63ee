"""Running the daemon against a test engine: in-process with an injectable clock
(``RunningDaemon``), or as a `sparkjoy run` process of its own (``daemon_process``)."""

from __future__ import annotations

import subprocess
import threading
from contextlib import closing, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import docker.errors

from sparkjoy import config
from sparkjoy.daemon.settings import DaemonSettings
from sparkjoy.daemon.supervisor import Supervisor
from tests.engine import IsolatedEngine
from tests.fixtures import wait_until


@contextmanager
def daemon_process(command: list[str], env: dict[str, str], log_path: Path):
    """Start `command` (a `sparkjoy run`) with its output in `log_path`; yield the process, and
    kill it if the test leaves it running (a test stops it itself, to check its exit code)."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


class RunningDaemon:
    """A Supervisor in a thread. ``clock_offset`` shifts its clock: "judge everything as of now + offset"."""

    def __init__(self, engine: IsolatedEngine, state_dir: Path, *, clock_offset: timedelta = timedelta(0),
                 **settings: object):
        flags = {
            "engine.host": engine.host,
            "max_age": "1h",
            "keep_recent": 0,
            "daemon.state_db": str(state_dir / "state.db"),
            "daemon.listen": "127.0.0.1:0",
            "daemon.quiet_period": "1h",  # no automatic first prune unless a test asks for one
            "daemon.audit": True,  # every prune checks that what its plan kept is still there
        }
        flags.update({(k if "." in k or k in config.POLICY_KEYS else f"daemon.{k}"): v for k, v in settings.items()})
        loaded = config.load(flags, None, environ={"HOME": str(state_dir)})
        self.offset = clock_offset
        self.supervisor = Supervisor(
            loaded, DaemonSettings.from_settings(loaded), clock=self.now,
            tick_seconds=0.05, pressure_check_seconds=0.2, backoff_max_seconds=1.0, build_check_seconds=0.2,
        )
        self.error: BaseException | None = None
        self.exit_code: int | None = None
        self.expect_audit_findings = False  # a test that makes a kept object vanish sets it
        self._thread = threading.Thread(target=self._run, name="test-daemon", daemon=True)

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset

    def _run(self) -> None:
        try:
            self.exit_code = self.supervisor.run()
        except BaseException as error:  # reported by stop() and wait_for()
            self.error = error

    def start(self) -> "RunningDaemon":
        self._thread.start()
        self.wait_for(lambda: self.supervisor.connections >= 1 and self.supervisor.interpreter is not None,
                      "the daemon to connect")
        return self

    def wait_for(self, condition, what: str, timeout: float = 60.0):
        def check():
            if self.error is not None:
                raise AssertionError(f"the daemon failed: {self.error!r}") from self.error
            return condition()

        return wait_until(check, timeout=timeout, what=what)

    def wait_for_events(self, image_ids: list[str], timeout: float = 30.0) -> None:
        """Wait until the daemon has learned a use of each image from the engine's events."""
        state = self.supervisor.state
        self.wait_for(lambda: all(i in state.memory().last_used for i in image_ids),
                      f"the daemon to learn the use of {image_ids}", timeout)

    def prune_and_wait(self, timeout: float = 60.0):
        before = len(self.supervisor.prunes)
        self.supervisor.request_prune()
        self.wait_for(lambda: len(self.supervisor.prunes) > before, "a prune", timeout)
        return self.supervisor.prunes[-1]

    def stop(self) -> None:
        self.supervisor.request_stop()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the daemon did not stop within 60 s"
        if self.error is not None:
            raise self.error
        assert self.exit_code == 0
        findings = [f for summary in self.supervisor.prunes if summary.result for f in (summary.result.audit or ())]
        assert self.expect_audit_findings or not findings, f"a daemon prune's audit found problems: {findings}"

    def __enter__(self) -> "RunningDaemon":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def image_exists(engine: IsolatedEngine, image_id: str) -> bool:
    with closing(engine.client()) as client:
        try:
            client.api.inspect_image(image_id)
        except docker.errors.NotFound:
            return False
    return True


def run_and_remove(engine: IsolatedEngine, image: str) -> None:
    """A short-lived container, like a cron job's: it runs, exits, and is removed."""
    from tests.fixtures import run_container

    container_id = run_container(engine, image, state="exited")
    with closing(engine.client()) as client:
        client.api.remove_container(container_id)
