"""A private engine whose data root can be saved once and restored before every trial.

Every tool must meet the same workload. Building W2 takes a quarter of an hour on 2 cores
(dockerd unpacks each layer in a process of its own), so each workload is built once, then
its data root is saved and restored before every trial: same image IDs, tags, last-tag
times, build cache and containers for every tool.

The data root is an ext4 file system in a sparse file mounted on a loop device
(tests/engine.py's `data_root_size`), so saving and restoring copy one file (seconds)
instead of thousands of overlay2 directories (`cp -a` of W2's took 40 s). Stop the
engine, unmount, copy the file, mount, start.

The engine is tests/engine.py's IsolatedEngine (its own network namespace, data root and
socket under /tmp/sjXXXX): the machine's own engine (/var/run/docker.sock) is never used.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.engine import IsolatedEngine, _mount_points_under

DATA_ROOT_BYTES = 6 * 1024**3  # sparse: only what is written takes space


class BenchEngine(IsolatedEngine):
    """IsolatedEngine on a loop-mounted data root, plus save()/restore() of that file."""

    def __init__(self, data_root_size: int = DATA_ROOT_BYTES):
        super().__init__(data_root_size=data_root_size)
        self._restores = 0

    def save(self, destination: Path) -> float:
        """Stop the engine, copy its data root's file system to `destination`, start again; return seconds."""
        started = time.perf_counter()
        self._stop_daemon()
        self._unmount_data_root()
        destination.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "--sparse=always", str(self._image_file), str(destination)], check=True)
        check = subprocess.run(["e2fsck", "-fn", str(destination)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"the saved data root {destination} is not clean:\n{check.stdout[-2000:]}")
        self._mount_data_root()
        self._start_daemon()
        return time.perf_counter() - started

    def restore(self, source: Path) -> float:
        """Stop the engine, replace its data root by a copy of `source`, start it; return seconds taken."""
        started = time.perf_counter()
        self._stop_daemon()
        self._unmount_data_root()
        # A new file every time: `mount -o loop` reuses a loop device still attached to the
        # same file (detaching after umount is asynchronous), and that device's cached blocks
        # of the old file system would then be mixed with the copied one.
        old = self._image_file
        self._restores += 1
        self._image_file = self.tmpdir / f"root-{self._restores}.img"
        subprocess.run(["cp", "--sparse=always", str(source), str(self._image_file)], check=True)
        old.unlink(missing_ok=True)
        self._mount_data_root()
        self._start_daemon()
        return time.perf_counter() - started

    def restart_engine(self) -> float:
        """Stop and start dockerd on the same data root (a cold engine, same data); return seconds."""
        started = time.perf_counter()
        self._stop_daemon()
        self._start_daemon()
        return time.perf_counter() - started

    def _unmount_data_root(self) -> None:
        """Unmount the data root (and anything dockerd left under it), never lazily: a file
        system detached while still in use is not flushed, and its copy would be corrupt.
        Container shims can take a moment to exit after dockerd, so retry for a while."""
        subprocess.run(["sync", "-f", str(self.data_root)], check=False)
        deadline = time.monotonic() + 30
        for mount_point in sorted(_mount_points_under(self.data_root), key=len, reverse=True):
            while True:
                result = subprocess.run(["umount", mount_point], capture_output=True, text=True)
                if result.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cannot unmount {mount_point}: {result.stderr.strip()}")
                time.sleep(0.5)

    def _mount_data_root(self) -> None:
        subprocess.run(["mount", "-o", "loop", str(self._image_file), str(self.data_root)], check=True)

    def version(self) -> str:
        out = subprocess.run(
            ["/usr/bin/docker", "version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})"],
            env=self.env(), capture_output=True, text=True, check=True,
        )
        return out.stdout.strip()

    def data_root_bytes(self) -> int:
        """Bytes used on the data root's file system (statvfs): what a prune really gives back."""
        import os

        stat = os.statvfs(self.data_root)
        return (stat.f_blocks - stat.f_bfree) * stat.f_frsize
