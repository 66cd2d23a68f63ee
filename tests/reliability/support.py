"""What the reliability tests share: a small world of objects, inventories, the safety check,
and running sparkjoy (library and CLI) through the fault proxy.

The safety rule every test checks: after a run, everything the engine held before is still
there (with every tag) unless the plan said to delete it. `lost()` returns the exceptions.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sparkjoy.engine.connect import Connection
from sparkjoy.engine.docker_engine import DockerEngine
from sparkjoy.executor import Executor, RunResult
from sparkjoy.planner import Plan, plan as make_plan
from sparkjoy.policy import Policy, VolumeMode

from tests import fixtures
from tests.engine import IsolatedEngine

SPARKJOY = Path(sys.executable).with_name("sparkjoy")
EVERYTHING_OLD = timedelta(seconds=-1)
# The policy of a greedy prune: everything old, nothing kept per repository, volumes too.
# Anything the planner saw and may delete, it deletes: the strictest test of the safety rules.
GREEDY_FLAGS = ["--max-age=-1s", "--keep-recent", "0", "--volumes=all", "--exclude", "keep/*"]


def greedy_policy(**overrides: Any) -> Policy:
    values: dict[str, Any] = dict(max_age=EVERYTHING_OLD, keep_recent=0, volumes=VolumeMode.ALL,
                                  exclude=("keep/*",))
    values.update(overrides)
    return Policy(**values)


# -- inventories -----------------------------------------------------------------------


@dataclass(frozen=True)
class Inventory:
    """What the engine holds, read directly (never through the proxy)."""

    images: dict[str, frozenset[str]]  # top-level image id -> tags
    containers: frozenset[str]
    build_cache: frozenset[str]
    volumes: frozenset[str]

    def keys(self) -> set[tuple[str, str]]:
        return ({("image", i) for i in self.images} | {("container", c) for c in self.containers}
                | {("build-cache", r) for r in self.build_cache} | {("volume", v) for v in self.volumes})

    @property
    def size(self) -> int:
        return len(self.keys())


def inventory(engine: IsolatedEngine) -> Inventory:
    with closing(engine.client()) as client:
        api = client.api
        images = {i["Id"]: frozenset(t for t in (i.get("RepoTags") or []) if t != "<none>:<none>")
                  for i in api.images()}
        containers = frozenset(c["Id"] for c in api.containers(all=True))
        build_cache = frozenset(r["ID"] for r in (api.df().get("BuildCache") or []))
        volumes = frozenset(v["Name"] for v in (api.volumes().get("Volumes") or []))
    return Inventory(images, containers, build_cache, volumes)


def lost(before: Inventory, after: Inventory, planned: set[tuple[str, str]]) -> list[str]:
    """Objects (and image tags) gone since `before` although the plan did not delete them.

    `planned` holds (kind, id) of the plan's deletions, kinds as in `Kind.value`.
    """
    problems = []
    for key in sorted(before.keys() - after.keys() - planned):
        problems.append(f"{key[0]} {key[1]} is gone but was not in the plan")
    for image_id, tags in before.images.items():
        if ("image", image_id) in planned or image_id not in after.images:
            continue
        if missing := tags - after.images[image_id]:
            problems.append(f"image {image_id} lost tags {sorted(missing)} but was not in the plan")
    return problems


# -- a world to prune ------------------------------------------------------------------


@dataclass
class World:
    """Objects of every kind: some the greedy policy deletes, some it must keep."""

    deletable_images: list[str] = field(default_factory=list)
    kept_images: list[str] = field(default_factory=list)
    stopped_containers: list[str] = field(default_factory=list)
    running_container: str = ""
    volumes: list[str] = field(default_factory=list)
    used_volume: str = ""


def make_world(engine: IsolatedEngine, *, images: int = 4, containers: int = 2, volumes: int = 1) -> World:
    """Images, containers and volumes of every fate, made in about a second."""
    world = World()
    specs = [{"tags": [f"old/app{n}:v1"]} for n in range(images)]
    specs.append({"tags": ["old/two:a", "old/two:b"]})  # two tags: untagged tag by tag
    # Kept: excluded, used by a running container, and age unknown (no last-tag time).
    specs += [{"tags": ["keep/me:1"]}, {"tags": ["busy/runner:1"]},
              {"tags": ["ageless/x:1"], "tag_on_load": True}]
    ids = load_many(engine, specs)
    world.deletable_images = ids[: images + 1]
    world.kept_images = ids[images + 1:]
    runner_image = ids[images + 2]
    with closing(engine.client()) as client:
        for n in range(volumes):
            world.volumes.append(client.volumes.create(f"oldvol{n}").name)
        world.used_volume = client.volumes.create("usedvol").name
        running = client.containers.create(runner_image, command=[fixtures.BUSYBOX, "sleep", "3600"],
                                           network_mode="none", stop_signal="SIGKILL",
                                           volumes={world.used_volume: {"bind": "/data", "mode": "rw"}})
        running.start()
        world.running_container = running.id
        for n in range(containers):
            container = client.containers.create(world.deletable_images[n % images],
                                                 command=[fixtures.BUSYBOX, "true"], network_mode="none")
            if n == 0:
                # One exited container (inspected in the snapshot for its finish time); the
                # others only created, never started: stopped too, and faster to make.
                container.start()
                container.wait(timeout=60)
            world.stopped_containers.append(container.id)
    return world


# -- running sparkjoy ------------------------------------------------------------------


def adapter(host: str, timeout: int = 30) -> DockerEngine:
    return DockerEngine(Connection(host, "test"), timeout=timeout)


def library_prune(host: str, policy: Policy | None = None, *, timeout: int = 30,
                  snapshot_host: str | None = None) -> tuple[Plan, RunResult]:
    """Snapshot (through `snapshot_host`, default `host`), plan, and execute through `host`, audited."""
    reader = adapter(snapshot_host or host, timeout)
    snapshot = reader.snapshot()
    the_plan = make_plan(snapshot, policy or greedy_policy(), now=snapshot.taken_at)
    result = Executor(adapter(host, timeout), audit=True, wait=lambda s: None).execute(the_plan)
    return the_plan, result


def planned_keys(the_plan: Plan) -> set[tuple[str, str]]:
    return {(o.kind.value, o.id) for o in the_plan.deletions}


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        return json.loads(self.stdout)

    def planned_keys(self) -> set[tuple[str, str]]:
        return {(o["kind"], o["id"]) for o in self.json["objects"] if o["decision"] == "delete"}

    def results(self) -> dict[tuple[str, str], str]:
        return {(o["kind"], o["id"]): o["result"] for o in self.json["objects"] if o["decision"] == "delete"}


_STATE_HOME: str | None = None


def cli_environment(host: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a sparkjoy command: DOCKER_HOST=`host`, no config file, no other
    engine settings, and a state directory of this test session's own (as root the default
    would be /var/lib/sparkjoy), shared by every run of the session as on a real host."""
    global _STATE_HOME
    if _STATE_HOME is None:
        _STATE_HOME = tempfile.mkdtemp(prefix="sjstate")
        atexit.register(shutil.rmtree, _STATE_HOME, True)
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("DOCKER_", "SPARKJOY_", "XDG_"))}
    environment.update({"DOCKER_HOST": host, "HOME": "/nonexistent", "XDG_CONFIG_HOME": "/nonexistent",
                        "XDG_STATE_HOME": _STATE_HOME})
    environment.update(env or {})
    return environment


def cli(host: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> CliRun:
    """Run the sparkjoy command with DOCKER_HOST=`host` (see `cli_environment`)."""
    environment = cli_environment(host, env)
    completed = subprocess.run([str(SPARKJOY), *args], env=environment, capture_output=True, text=True,
                               timeout=timeout, stdin=subprocess.DEVNULL)
    return CliRun(completed.returncode, completed.stdout, completed.stderr)


def prune_cli(host: str, *extra: str, timeout_flag: str = "30s") -> CliRun:
    return cli(host, "prune", "-f", "--audit", "--format", "json", "--timeout", timeout_flag,
               *GREEDY_FLAGS, *extra)


def assert_no_traceback(run: CliRun) -> None:
    # The tail names the exception; the head is only click's frames.
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "Traceback" not in run.stdout, run.stdout[-3000:]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def load_many(engine: IsolatedEngine, specs: list[dict[str, Any]]) -> list[str]:
    """Load many runnable images in one `POST /images/load`; return their ids in order.

    Each spec: {"tags": [...], "labels": {...}, "tag_on_load": bool}. All images share the
    busybox layer and differ by their config, so the engine unpacks one layer, once: about
    0.1 s for a dozen images instead of 0.5 s each.
    """
    import hashlib

    layer = fixtures.busybox_layer()
    layer_path = f"{layer.diff_id.removeprefix('sha256:')}/layer.tar"
    created = fixtures._rfc3339(datetime.now(timezone.utc))
    members: dict[str, bytes] = {layer_path: layer.tar}
    manifest, ids = [], []
    for number, spec in enumerate(specs):
        config = {
            "architecture": fixtures._engine_architecture(), "os": "linux", "created": created,
            "config": {"Labels": {"sparkjoy.test.n": str(number), **spec.get("labels", {})},
                       "Cmd": [fixtures.BUSYBOX, "sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
            "history": [{"created": created, "created_by": "sparkjoy reliability fixture"}],
        }
        config_bytes = json.dumps(config, sort_keys=True).encode()
        digest = hashlib.sha256(config_bytes).hexdigest()
        members[digest + ".json"] = config_bytes
        ids.append("sha256:" + digest)
        manifest.append({"Config": digest + ".json", "Layers": [layer_path],
                         "RepoTags": list(spec.get("tags", [])) if spec.get("tag_on_load") else None})
    members["manifest.json"] = json.dumps(manifest).encode()
    with closing(engine.client()) as client:
        client.images.load(fixtures._tar_of(members))
        for image_id, spec in zip(ids, specs):
            if spec.get("tag_on_load"):
                continue
            for name in spec.get("tags", []):
                repository, _, tag = name.rpartition(":")
                client.api.tag(image_id, repository, tag)
    return ids
