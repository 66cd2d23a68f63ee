"""Helpers that make test objects (images, build cache, containers) on an engine fast.

Nothing can be pulled on the project's machines, so every image is made here:

- `import_image` / `load_image` write a `docker save` tarball in memory and load it
  through `POST /images/load`. No build runs, so this is the fast way to get images of a
  chosen size, labels, creation time and layer sharing.
- `build` / `start_build` run a real `docker build` (BuildKit or classic) with a
  static busybox in the context, for tests that need build cache or built images.
- `run_container` makes a container in a chosen state from an image that holds
  /bin/busybox (anything built from `BUSYBOX_BASE`, or loaded with `busybox_layer()`).

What the engine (20.10, API 1.41) does with a loaded image, checked by
tests/test_engine_harness.py:

- `Created` in `/images/json` and image inspect is exactly the config's `created`,
  so `import_image(..., created=an_old_datetime)` gives an image that looks old.
- `Metadata.LastTagTime` is NOT set by `POST /images/load`, not even for the tags
  named in the tarball's manifest (`tag_on_load=True`): image inspect shows
  `0001-01-01T00:00:00Z`. Tagging through the API afterwards (`POST /images/{id}/tag`,
  the default here) sets it to the time of tagging. So a tagged image with no last
  tag time is made with `tag_on_load=True`, one tagged "now" with the default.
- Loaded images have no `Parent`, even when they share layers: layer sharing shows in
  `/system/df` `SharedSize`, but deleting a "base" never conflicts with its
  "children" (it does for images made by the classic builder).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import platform
import random
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from docker.utils import parse_repository_tag

from tests.engine import IsolatedEngine

BUSYBOX = "/bin/busybox"
# The docker.io CLI: /usr/local/bin/docker (CLI 28) comes first on PATH but has no
# buildx plugin, so BuildKit builds fail with it.
DOCKER_CLI = "/usr/bin/docker"

# Start of a Dockerfile whose image can RUN shell commands: the static busybox from
# the context, plus its applet links (/bin/sh, /bin/sleep, ...).
BUSYBOX_BASE = 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'

# A fixed mtime keeps layer tarballs byte-identical for identical content, so a seed
# reproduces the same layer (and so the same diff_id) every time.
_LAYER_MTIME = 1_600_000_000

Tags = str | Sequence[str] | None


class FixtureError(RuntimeError):
    """A fixture could not be made; the message carries the engine's or CLI's output."""


# -- images without building ------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One uncompressed layer tarball. The same Layer in two images is a shared layer."""

    tar: bytes

    @functools.cached_property
    def diff_id(self) -> str:
        return "sha256:" + hashlib.sha256(self.tar).hexdigest()


def make_layer(size_bytes: int, *, seed: int | None = None) -> Layer:
    """Given a size, return a layer holding one file of that many random bytes.

    The bytes are random so that no two layers are ever deduplicated by the engine;
    pass the same `seed` to get the same layer again on purpose.
    Example: `make_layer(5_000_000).diff_id` -> "sha256:..."
    """
    if size_bytes < 0:
        raise ValueError(f"size_bytes must be >= 0, got {size_bytes}")
    if seed is None:
        name = f"data-{os.urandom(8).hex()}.bin"
        content = os.urandom(size_bytes)
    else:
        generator = random.Random(seed)
        name = f"data-seed-{seed}.bin"
        content = generator.randbytes(size_bytes)
    return Layer(_tar_of({name: content}))


@functools.cache
def busybox_layer() -> Layer:
    """The layer that makes an image runnable: /bin/busybox, the same bytes every time."""
    return Layer(_tar_of({"bin/busybox": Path(BUSYBOX).read_bytes()}, executable=True))


def load_image(
    engine: IsolatedEngine,
    layers: Sequence[Layer],
    tag: Tags = None,
    *,
    labels: Mapping[str, str] | None = None,
    created: datetime | None = None,
    tag_on_load: bool = False,
) -> str:
    """Load an image made of `layers` (bottom first); return its id ("sha256:...").

    `created` (timezone-aware; default now) becomes the image's `Created`. Tags are
    added through the API after loading (which sets LastTagTime), or with
    `tag_on_load=True` by the tarball's manifest (which leaves LastTagTime unset).
    """
    tags = _tag_list(tag)
    created_text = _rfc3339(created or datetime.now(timezone.utc))
    config = {
        "architecture": _engine_architecture(),
        "os": "linux",
        "created": created_text,
        "config": {
            "Labels": dict(labels) if labels else None,
            # Only runs when the image holds busybox_layer(); harmless otherwise.
            "Cmd": [BUSYBOX, "sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": created_text, "created_by": "sparkjoy test fixture"}
                    for _ in layers],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    image_id = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    layer_paths = [f"{layer.diff_id.removeprefix('sha256:')}/layer.tar" for layer in layers]
    manifest = [{
        "Config": image_id.removeprefix("sha256:") + ".json",
        "RepoTags": tags if tag_on_load and tags else None,
        "Layers": layer_paths,
    }]
    members = {"manifest.json": json.dumps(manifest).encode(),
               image_id.removeprefix("sha256:") + ".json": config_bytes}
    for path, layer in zip(layer_paths, layers):
        members[path] = layer.tar
    archive = _tar_of(members)

    with closing(engine.client()) as client:
        loaded = client.images.load(archive)
        if image_id not in {image.id for image in loaded}:
            raise FixtureError(f"loaded {[image.id for image in loaded]}, expected {image_id}")
        if not tag_on_load:
            for name in tags:
                repository, tag_part = parse_repository_tag(name)
                client.api.tag(image_id, repository, tag_part or "latest")
    return image_id


def import_image(
    engine: IsolatedEngine,
    size_bytes: int,
    tag: Tags = None,
    labels: Mapping[str, str] | None = None,
    created: datetime | None = None,
    *,
    base: Sequence[Layer] = (),
    seed: int | None = None,
    tag_on_load: bool = False,
) -> str:
    """Make an image of `base` layers plus one new layer of `size_bytes` random bytes.

    Returns the image id. With `base`, images share those layers:
        shared = [make_layer(10_000_000)]
        parent = load_image(engine, shared, "base:1")
        child = import_image(engine, 1_000_000, "child:1", base=shared)
    Add `base=[busybox_layer()]` to be able to run containers from it.
    """
    layers = [*base, make_layer(size_bytes, seed=seed)]
    return load_image(engine, layers, tag, labels=labels, created=created,
                      tag_on_load=tag_on_load)


def busybox_image(engine: IsolatedEngine, tag: Tags = None, *,
                  labels: Mapping[str, str] | None = None) -> str:
    """A runnable image (just busybox) for containers, without building."""
    return load_image(engine, [busybox_layer()], tag, labels=labels)


# -- building ---------------------------------------------------------------------


def busybox_context(tmpdir: str | os.PathLike) -> Path:
    """Copy the static busybox into build context `tmpdir`; return the directory."""
    directory = Path(tmpdir)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, directory / "busybox")
    return directory


@dataclass
class RunningBuild:
    """A `docker build` in progress. `wait()` returns the image id.

    Usable as a context manager, which kills the build if the test ends early.
    """

    popen: subprocess.Popen
    workdir: Path

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        """What the CLI printed so far (stdout and stderr together)."""
        return (self.workdir / "build.log").read_text(errors="replace")

    def wait(self, timeout: float = 300) -> str:
        """Wait for the build to finish; return the image id or raise FixtureError."""
        try:
            returncode = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise FixtureError(f"docker build still running after {timeout} s") from None
        try:
            if returncode != 0:
                raise FixtureError(f"docker build failed with status {returncode}:\n{self.output()}")
            return (self.workdir / "iid").read_text().strip()
        finally:
            self.close()

    def close(self) -> None:
        """Kill the build if it still runs and remove its context."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "RunningBuild":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def start_build(
    engine: IsolatedEngine,
    dockerfile: str,
    tag: Tags = None,
    *,
    buildkit: bool = True,
    files: Mapping[str, bytes] | None = None,
    labels: Mapping[str, str] | None = None,
) -> RunningBuild:
    """Start `docker build` of `dockerfile` in the background; see `build`."""
    workdir = Path(tempfile.mkdtemp(prefix="sjbuild"))
    context = busybox_context(workdir / "context")
    for relative, content in (files or {}).items():
        path = (context / relative).resolve()
        if not path.is_relative_to(context.resolve()):
            raise ValueError(f"file {relative!r} would land outside the build context")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    dockerfile_path = workdir / "Dockerfile"  # outside the context: not part of it
    dockerfile_path.write_text(dockerfile)

    command = [DOCKER_CLI, "build", "--iidfile", str(workdir / "iid"),
               "-f", str(dockerfile_path)]
    for name in _tag_list(tag):
        command += ["-t", name]
    for key, value in (labels or {}).items():
        command += ["--label", f"{key}={value}"]
    if buildkit:
        command.append("--progress=plain")  # readable log lines instead of a TTY UI
    command.append(str(context))

    env = engine.env()
    env["DOCKER_BUILDKIT"] = "1" if buildkit else "0"
    # Output goes to a file, not a pipe, so a chatty build can never block on a full
    # pipe while nobody reads it. The child keeps its own copy of the descriptor.
    with open(workdir / "build.log", "wb") as log:
        popen = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT)
    return RunningBuild(popen, workdir)


class StepGate:
    """A build step that waits until the test opens it: no guessed sleep decides the test.

    `gate.run_step()` is a Dockerfile RUN line that loops until a file appears at the root of
    the step's own filesystem (for at most `limit` seconds, so a failed test never leaves a
    build behind). The test, root on the engine's host, finds the step's shell by its unique
    marker in /proc and creates that file through /proc/<pid>/root: this works for BuildKit
    and classic steps alike, as neither can see the test's files.
    """

    def __init__(self) -> None:
        self.marker = f"sparkjoy-gate-{uuid.uuid4().hex[:12]}"

    def run_step(self, limit: int = 300) -> str:
        return (f'RUN i=0; while [ ! -e /{self.marker} ] && [ $i -lt {limit * 10} ]; '
                f'do sleep 0.1; i=$((i+1)); done; test -e /{self.marker}\n')

    def _pids(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if self.marker.encode() in cmdline and b"while" in cmdline:
                pids.append(int(entry.name))
        return pids

    def waiting(self) -> bool:
        """True once the step runs and waits at the gate."""
        return bool(self._pids())

    def open(self) -> None:
        pids = self._pids()
        if not pids:
            raise FixtureError(f"no build step waits at gate {self.marker}")
        for pid in pids:
            (Path(f"/proc/{pid}/root") / self.marker).touch()


def build(
    engine: IsolatedEngine,
    dockerfile: str,
    tag: Tags = None,
    *,
    buildkit: bool = True,
    files: Mapping[str, bytes] | None = None,
    labels: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> str:
    """Build `dockerfile` with /usr/bin/docker; return the image id ("sha256:...").

    The context holds `busybox` plus `files` (relative path -> bytes), so
    `BUSYBOX_BASE + "RUN echo hi > /x\\n"` works. Raises FixtureError with the CLI's
    output when the build fails.
    """
    return start_build(engine, dockerfile, tag, buildkit=buildkit, files=files,
                       labels=labels).wait(timeout)


# -- containers -------------------------------------------------------------------


def run_container(
    engine: IsolatedEngine,
    image: str,
    *,
    state: Literal["running", "exited", "created"],
    labels: Mapping[str, str] | None = None,
) -> str:
    """Make a container of `image` (which must hold /bin/busybox) in `state`; return its id.

    running: `busybox sleep 3600`; exited: `busybox true`, waited for, exit code 0;
    created: never started.
    """
    command = {"running": [BUSYBOX, "sleep", "3600"],
               "exited": [BUSYBOX, "true"],
               "created": [BUSYBOX, "true"]}[state]
    with closing(engine.client()) as client:
        container = client.containers.create(
            image, command=command, labels=dict(labels or {}),
            # No network needed, and "none" skips bridge and iptables set-up.
            network_mode="none",
            # sleep as PID 1 ignores SIGTERM, so a stop (or the engine's shutdown)
            # would wait the full 10 s grace period for every running container.
            stop_signal="SIGKILL",
        )
        if state != "created":
            container.start()
        if state == "exited":
            result = container.wait(timeout=60)
            if result.get("StatusCode") != 0:
                raise FixtureError(f"container {container.id} exited with {result}")
        container.reload()
        if container.status != state:
            raise FixtureError(f"container {container.id} is {container.status}, wanted {state}")
        return container.id


# -- waiting ----------------------------------------------------------------------


def wait_until(condition: Callable[[], object], *, timeout: float, what: str,
               interval: float = 0.05) -> object:
    """Poll `condition` until it returns something truthy; return that, or raise.

    For conditions a test cannot be told about, such as "the build's cache records
    are in use": poll the state itself rather than sleeping a guessed time.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise FixtureError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# -- small helpers ----------------------------------------------------------------


def _tar_of(members: Mapping[str, bytes], *, executable: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in members.items():
            # Parent directories first: a layer should not rely on them existing below.
            parts = Path(name).parts
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in archive.getnames():
                    info = tarfile.TarInfo(directory)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    info.mtime = _LAYER_MTIME
                    archive.addfile(info)
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o755 if executable else 0o644
            info.mtime = _LAYER_MTIME
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _tag_list(tag: Tags) -> list[str]:
    if tag is None:
        return []
    if isinstance(tag, str):
        return [tag]
    return list(tag)


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        # A naive datetime would silently mean local time; engines speak UTC.
        raise ValueError("created must be timezone-aware, e.g. datetime(..., tzinfo=timezone.utc)")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@functools.cache
def _engine_architecture() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)
