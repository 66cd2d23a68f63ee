"""A private Docker engine for the test suite, isolated from the machine's own.

The recipe (see shared/docs/test-engine.md) is::

    unshare --net /usr/sbin/dockerd --data-root $T/root --exec-root $T/exec \
        --pidfile $T/dockerd.pid -H unix://$T/d.sock --cgroup-parent=/sparkjoy-test

- `unshare --net` gives dockerd a network namespace of its own, so the bridge and
  iptables rules it creates never touch the host's `docker0` (`--bridge=none` would
  delete the host's bridge instead, breaking the host engine).
- Data root, exec root, pidfile and socket all live under one short temporary
  directory $T, so removing $T removes every trace, and the socket path stays well
  under the ~100 byte limit of unix socket paths.

This module needs only the standard library and sparkjoy's own unix-socket HTTP connection
(for the readiness ping), except `IsolatedEngine.client()`, which imports the docker SDK when
called.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from sparkjoy.engine.transport import UnixConnection

DOCKERD = "/usr/sbin/dockerd"

# dockerd 20.10 attaches to a system containerd if one listens here instead of
# starting its own; the engines would then share containerd's "moby" namespace.
SYSTEM_CONTAINERD_SOCKET = "/run/containerd/containerd.sock"

READY_TIMEOUT_S = 30.0
# dockerd's own shutdown waits up to 15 s for containers to stop, so give it more.
STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05


class EngineError(RuntimeError):
    """The private engine could not be started or stopped."""


class IsolatedEngine:
    """A dockerd of our own: start(), use .host / .env() / .client(), stop().

    With `data_root_size` (bytes), the data root is an ext4 file system of that size
    mounted from a loop file, so tests can fill the disk for real.

    Usable as a context manager: `with IsolatedEngine() as engine: ...`.
    """

    def __init__(self, data_root_size: int | None = None):
        if data_root_size is not None and data_root_size <= 0:
            raise ValueError(f"data_root_size must be positive, got {data_root_size}")
        self.data_root_size = data_root_size
        # Short on purpose: /tmp/sjXXXXXXXX/d.sock is about 22 bytes.
        self.tmpdir = Path(tempfile.mkdtemp(prefix="sj", dir="/tmp"))
        self.data_root = self.tmpdir / "root"
        self.exec_root = self.tmpdir / "exec"
        self.pidfile = self.tmpdir / "dockerd.pid"
        self.log_path = self.tmpdir / "dockerd.log"
        self.socket_path = str(self.tmpdir / "d.sock")
        self.host = f"unix://{self.socket_path}"
        self._image_file = self.tmpdir / "root.img"
        self._process: subprocess.Popen | None = None
        self._removed = False

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> "IsolatedEngine":
        """Prepare the data root and start dockerd; return self once it answers /_ping.

        On failure, everything made so far is cleaned up and EngineError is raised
        with the tail of dockerd's log.
        """
        try:
            self.data_root.mkdir(exist_ok=True)
            if self.data_root_size is not None:
                self._mount_sized_data_root()
            self._start_daemon()
        except BaseException as error:
            try:
                self.stop()
            except Exception as cleanup_error:  # keep the first error the one raised
                error.add_note(f"cleaning up after the failed start also failed: {cleanup_error!r}")
            raise
        return self

    def restart(self) -> None:
        """Stop dockerd and start it again on the same data root and socket."""
        self._stop_daemon()
        self._start_daemon()

    def stop(self) -> None:
        """Stop dockerd, unmount everything under the temp dir, and remove it.

        Safe to call more than once, and after a failed start.
        """
        if self._removed:
            return
        self._stop_daemon()
        self._unmount_all()
        shutil.rmtree(self.tmpdir)
        self._removed = True

    def __enter__(self) -> "IsolatedEngine":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what tests use ------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """A copy of os.environ that points docker clients at this engine only.

        DOCKER_CONTEXT would override DOCKER_HOST in the CLI, and TLS settings meant
        for some other engine would break a plain unix socket, so they are dropped.
        """
        env = dict(os.environ)
        for name in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            env.pop(name, None)
        env["DOCKER_HOST"] = self.host
        return env

    def client(self):
        """A new docker SDK client for this engine (the caller closes it)."""
        import docker  # local import: the rest of this module needs no SDK

        return docker.DockerClient(base_url=self.host, version="auto", timeout=300)

    def ping(self, timeout: float = 2.0) -> bool:
        """True when the engine answers `GET /_ping` with 200 OK."""
        connection = UnixConnection(self.socket_path, timeout=timeout)
        try:
            connection.request("GET", "/_ping")
            response = connection.getresponse()
            return response.status == 200 and response.read() == b"OK"
        except OSError:  # socket not there yet, refused, reset, timed out
            return False
        finally:
            connection.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no dockerd log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- internals -----------------------------------------------------------------

    def _command(self) -> list[str]:
        command = [
            "unshare", "--net",
            DOCKERD,
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pidfile),
            "-H", self.host,
            "--cgroup-parent=/sparkjoy-test",
        ]
        if os.path.exists(SYSTEM_CONTAINERD_SOCKET):
            # Keep our containers out of the system containerd's "moby" namespace,
            # where the machine's own engine keeps its containers.
            namespace = "sparkjoy-" + self.tmpdir.name
            command += [
                "--containerd-namespace", namespace,
                "--containerd-plugins-namespace", namespace + "-plugins",
            ]
        return command

    def _start_daemon(self) -> None:
        if self._process is not None and self._process.poll() is None:
            raise EngineError(f"dockerd for {self.tmpdir} is already running")
        with open(self.log_path, "ab") as log:
            # A session of its own: a Ctrl-C at the terminal reaches pytest, whose
            # teardown then stops dockerd in order, instead of both at once.
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ping():
            if self._process.poll() is not None:
                raise EngineError(
                    f"dockerd exited with status {self._process.returncode} before "
                    f"it was ready; its log ended with:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise EngineError(
                    f"dockerd did not answer /_ping within {READY_TIMEOUT_S:.0f} s; "
                    f"its log ended with:\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL_S)

    def _stop_daemon(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            # The pidfile names dockerd; `unshare` without --fork execs it, so it is
            # normally our child's own pid, which we fall back to.
            pid = _read_pid(self.pidfile) or process.pid
            _signal(pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                # dockerd's managed containerd would outlive a killed dockerd.
                containerd_pid = _read_pid(self.exec_root / "containerd" / "containerd.pid")
                _signal(pid, signal.SIGKILL)
                _signal(process.pid, signal.SIGKILL)
                if containerd_pid:
                    _signal(containerd_pid, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT_S)
        self._process = None

    def _mount_sized_data_root(self) -> None:
        subprocess.run(["truncate", "-s", str(self.data_root_size), str(self._image_file)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self._image_file)], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["mount", "-o", "loop", str(self._image_file), str(self.data_root)], check=True)

    def _unmount_all(self) -> None:
        """Unmount whatever is still mounted under the temp dir, deepest first.

        dockerd normally unmounts its overlays and network-namespace files on exit,
        but not when it was killed; our own loop mount is always here. A loop device
        attached by `mount -o loop` is released on unmount (autoclear).
        """
        for mount_point in sorted(_mount_points_under(self.tmpdir), key=len, reverse=True):
            result = subprocess.run(["umount", mount_point], capture_output=True, text=True)
            if result.returncode != 0:
                # Busy: detach now, the kernel finishes when the last user goes.
                subprocess.run(["umount", "-l", mount_point], check=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _mount_points_under(directory: Path) -> list[str]:
    """Mount points at or below `directory`, from /proc/self/mountinfo."""
    prefix = str(directory)
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            # Field 5 is the mount point, with space, tab, newline and backslash
            # written as octal escapes.
            mount_point = line.split()[4]
            mount_point = (mount_point.replace("\\040", " ").replace("\\011", "\t")
                           .replace("\\012", "\n").replace("\\134", "\\"))
            if mount_point == prefix or mount_point.startswith(prefix + "/"):
                found.append(mount_point)
    return found
