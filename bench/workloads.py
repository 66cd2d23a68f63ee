"""The workloads: W1 (a CI host: builds, rebuilt tags, containers, build cache), W2 (5,000
images from tars) and W3 (synthetic snapshots for the planner alone, no engine).

Everything is derived from a fixed seed, so a workload built twice is the same workload
(same layer bytes, same image IDs, same tags, same sizes). Only the wall-clock times the
engine stamps (last-tag times, BuildKit's created times, cache records' times) differ,
and each workload records the cutoff that separates its "old" from its "new" objects.

Making images fast: no build for the bulk. An image is a `docker save` tarball written in
memory (config JSON + layer tars) and loaded with `POST /images/load`; many images go in
one tarball per call. Tags are then set through the API (`POST /images/{id}/tag`), because
only API tagging sets `Metadata.LastTagTime`, which sparkjoy ages images by.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

from tests.fixtures import BUSYBOX_BASE, DOCKER_CLI, build, busybox_layer, run_container

# Layers and configs carry this mtime and these times, so bytes (and so IDs) are reproducible.
_MTIME = 1_600_000_000
GAP_SECONDS = 3.0  # between the "old" and the "new" phase; the cutoff sits in the middle


# -- tarballs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TarLayer:
    tar: bytes
    diff_id: str

    @classmethod
    def of_files(cls, files: dict[str, bytes]) -> "TarLayer":
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for name, content in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(content)
                info.mode = 0o644
                info.mtime = _MTIME
                archive.addfile(info, io.BytesIO(content))
        data = buffer.getvalue()
        return cls(data, "sha256:" + hashlib.sha256(data).hexdigest())

    @classmethod
    def random(cls, size: int, seed: int) -> "TarLayer":
        """A layer holding one file of `size` seeded random bytes (never deduplicated by accident)."""
        return cls.of_files({f"data/blob-{seed}.bin": random.Random(seed).randbytes(size)})


@dataclass(frozen=True)
class ImageSpec:
    layers: tuple[TarLayer, ...]
    created: datetime
    labels: dict[str, str] = field(default_factory=dict)
    comment: str = ""

    @property
    def config(self) -> bytes:
        created = self.created.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "created": created,
                "config": {"Labels": self.labels or None, "Cmd": ["/bin/busybox", "sh"]},
                "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in self.layers]},
                # One history step per layer, so the engine's history lines up with the layers.
                "history": [{"created": created, "created_by": f"bench {self.comment}"} for _ in self.layers],
            },
            sort_keys=True,
        ).encode()

    @property
    def id(self) -> str:
        return "sha256:" + hashlib.sha256(self.config).hexdigest()


def multi_image_tarball(images: Sequence[ImageSpec]) -> bytes:
    """Given image specs, return one `docker save`-style tarball holding all of them (layers once)."""
    buffer = io.BytesIO()
    written: set[str] = set()
    manifest = []

    def add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = _MTIME
        archive.addfile(info, io.BytesIO(data))

    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for image in images:
            config = image.config
            config_name = hashlib.sha256(config).hexdigest() + ".json"
            layer_paths = []
            for layer in image.layers:
                path = layer.diff_id.removeprefix("sha256:") + "/layer.tar"
                if path not in written:
                    add(archive, path, layer.tar)
                    written.add(path)
                layer_paths.append(path)
            if config_name not in written:
                add(archive, config_name, config)
                written.add(config_name)
            manifest.append({"Config": config_name, "RepoTags": None, "Layers": layer_paths})
        add(archive, "manifest.json", json.dumps(manifest).encode())
    return buffer.getvalue()


def load_images(client, images: Sequence[ImageSpec], batch: int = 500) -> None:
    """Load images through `POST /images/load`, `batch` images per call."""
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        answer = client.api.load_image(multi_image_tarball(chunk))
        for _ in answer or ():  # the SDK streams the progress; drain it
            pass


def tag_many(client, pairs: Sequence[tuple[str, str]], workers: int = 4) -> None:
    """Tag image id -> "repo:tag" for every pair; pairs naming the same tag are applied in order."""
    by_tag: dict[str, list[str]] = {}
    for image_id, name in pairs:
        by_tag.setdefault(name, []).append(image_id)

    def apply(name: str) -> None:
        repository, tag = name.rsplit(":", 1)
        for image_id in by_tag[name]:
            client.api.tag(image_id, repository, tag, force=True)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(apply, by_tag))


# -- the workloads on an engine ------------------------------------------------------------


@dataclass
class Built:
    """What a built workload holds, for the comparisons and the report."""

    name: str
    cutoff: datetime  # objects last tagged (images) before it are "old"
    seconds: float  # time it took to build
    counts: dict[str, int]
    notes: list[str]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _sleep_past_gap(first_phase_end: datetime) -> datetime:
    """Wait out the gap between the phases; return the cutoff in its middle."""
    cutoff = first_phase_end + timedelta(seconds=GAP_SECONDS / 2)
    time.sleep(GAP_SECONDS)
    return cutoff


def build_w2(engine, images: int = 5000, old_fraction: float = 0.8, seed: int = 2) -> Built:
    """W2: `images` images loaded from tars, one shared busybox base layer plus a small layer
    each; half tagged (10 repositories), half dangling (tags rebuilt over and over, leaving
    the older images untagged). The first `old_fraction` are made, then after a gap the rest."""
    started = time.perf_counter()
    rng = random.Random(seed)
    base = TarLayer(busybox_layer().tar, busybox_layer().diff_id)
    specs = []
    epoch = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for index in range(images):
        unique = TarLayer.random(rng.randint(2_000, 40_000), seed * 1_000_000 + index)
        # Created a fixed time in the past per image: reproducible IDs. Docker's `until` filter
        # compares Created, so the workload's phases also order Created (old < cutoff < new) below.
        specs.append(ImageSpec((base, unique), epoch + timedelta(seconds=index), comment=f"w2-{index}"))
    # Which images are tagged, and with what: even index -> a release tag, odd -> a rebuilt tag.
    pairs: list[tuple[str, str]] = []
    for index, spec in enumerate(specs):
        if index % 2 == 0:
            pairs.append((spec.id, f"bench-w2/svc{index % 10}:v{index}"))
        else:
            pairs.append((spec.id, f"bench-w2/rebuilt{index % 50}:latest"))
    old_count = int(images * old_fraction)
    # The "new" images must be new for docker's `until` (Created) too: give them Created in the
    # new phase. Their IDs then depend on the run's time; the old ones are fixed by the seed.
    with closing(engine.client()) as client:
        load_images(client, specs[:old_count])
        tag_many(client, pairs[:old_count])
        cutoff = _sleep_past_gap(_now())
        new_created = _now()
        new_specs = [
            ImageSpec(spec.layers, new_created + timedelta(milliseconds=i), comment=spec.comment)
            for i, spec in enumerate(specs[old_count:])
        ]
        remap = {old.id: new.id for old, new in zip(specs[old_count:], new_specs)}
        load_images(client, new_specs)
        tag_many(client, [(remap[i], name) for i, name in pairs[old_count:]])
        listed = client.api.images(all=True)
    dangling = sum(1 for i in listed if not [t for t in i.get("RepoTags") or [] if t != "<none>:<none>"])
    return Built(
        "W2",
        cutoff,
        time.perf_counter() - started,
        {"images": len(listed), "dangling": dangling, "tagged": len(listed) - dangling, "old": old_count},
        [
            f"{images} images loaded from in-memory tarballs, 500 images per POST /images/load; "
            "each is the shared busybox layer plus one unique layer of 2-40 KB (seed 2)",
            "tagged through the API: even images get a release tag in 10 repositories; odd images are "
            "tagged in turn with one of 50 `rebuilt:latest` tags, so all but the last of each are left dangling",
            f"the first {old_count} images (old) were made and tagged, then {GAP_SECONDS:.0f} s later the rest (new)",
        ],
    )


W1_REPOS = ("bench-w1/api", "bench-w1/web", "bench-w1/worker")


def build_w1(engine, loaded_per_repo: int = 95, builds_per_repo: int = 2, containers: int = 30,
             buildkit: bool = True, seed: int = 1) -> Built:
    """W1: a CI host. A BuildKit-built base (busybox), a few BuildKit builds per repository
    (build cache), ~300 images in three repositories on the shared base loaded from tars
    (the base's own layers, exported with `docker save`), rebuilt tags left dangling, and
    containers in mixed states. Old phase, gap, new phase."""
    started = time.perf_counter()
    rng = random.Random(seed)
    env = engine.env()
    notes = []
    # 1. BuildKit: the base, then a few app builds per repository (each makes cache records).
    if not buildkit:  # the smoke run: no build at all, the base is loaded like the rest
        with closing(engine.client()) as client:
            base = ImageSpec((TarLayer(busybox_layer().tar, busybox_layer().diff_id),),
                             datetime(2025, 12, 1, tzinfo=timezone.utc), comment="w1-base")
            load_images(client, [base])
            tag_many(client, [(base.id, "bench-w1/base:1")])
    else:
        build(engine, BUSYBOX_BASE, "bench-w1/base:1", timeout=600)
    build_ids = []
    for repo in (W1_REPOS if buildkit else ()):
        for number in range(builds_per_repo):
            size = rng.randint(200_000, 1_500_000)
            dockerfile = (BUSYBOX_BASE + f"RUN head -c {size} /dev/urandom > /app.bin\n"
                          f'LABEL bench.build="{repo}-{number}"\n')
            # The second build of each repository rebuilds the first's tag: its first image dangles.
            build_ids.append(build(engine, dockerfile, f"{repo}:built", timeout=600))
    if buildkit:
        notes.append(f"BuildKit (/usr/bin/docker, DOCKER_BUILDKIT=1): base bench-w1/base:1 (busybox) and "
                 f"{builds_per_repo} builds per repository, each rebuilding `REPO:built` "
                     "(so all but the last built image of each repository dangle)")

    # 2. The base's layers, exactly as built, so loaded images share them with the built ones.
    with tempfile.TemporaryDirectory(prefix="sjw1") as directory:
        saved = Path(directory) / "base.tar"
        subprocess.run([DOCKER_CLI, "save", "-o", str(saved), "bench-w1/base:1"], env=env, check=True)
        with tarfile.open(saved) as archive:
            manifest = json.load(archive.extractfile("manifest.json"))
            base_layers = tuple(
                TarLayer(data, "sha256:" + hashlib.sha256(data).hexdigest())
                for data in (archive.extractfile(path).read() for path in manifest[0]["Layers"])
            )

    # 3. Loaded images: per repository `loaded_per_repo`, sizes 50 KB - 3 MB; 80% version tags,
    # the rest rebuilds of `REPO:latest` (all but the last dangle). First 80% old, rest new.
    epoch = datetime(2026, 1, 1, tzinfo=timezone.utc)
    plan = []  # (spec, tag)
    for r, repo in enumerate(W1_REPOS):
        for index in range(loaded_per_repo):
            unique = TarLayer.random(rng.randint(50_000, 3_000_000), seed * 1_000_000 + r * 10_000 + index)
            spec = ImageSpec(base_layers + (unique,), epoch + timedelta(seconds=r * 10_000 + index),
                             labels={"bench.repo": repo}, comment=f"w1-{r}-{index}")
            tag = f"{repo}:v{index}" if index % 5 else f"{repo}:latest"
            plan.append((spec, tag))
    plan.sort(key=lambda pair: pair[0].created)
    interleaved = [plan[i] for i in sorted(range(len(plan)), key=lambda i: (i % loaded_per_repo, i))]
    old_count = int(len(interleaved) * 0.8)
    old, new = interleaved[:old_count], interleaved[old_count:]
    with closing(engine.client()) as client:
        load_images(client, [spec for spec, _ in old], batch=100)
        tag_many(client, [(spec.id, tag) for spec, tag in old])
        # Containers of old images (the runnable base is in every loaded image).
        states = (["running"] * (containers // 3) + ["exited"] * (containers // 3)
                  + ["created"] * (containers - 2 * (containers // 3)))
        container_images = [spec.id for spec, _ in old[:: max(1, len(old) // containers)]][:containers]
        for state, image_id in zip(states, container_images):
            _container(client, image_id, state)
        cutoff = _sleep_past_gap(_now())
        new_created = _now()
        new = [(ImageSpec(s.layers, new_created + timedelta(milliseconds=i), s.labels, s.comment), t)
               for i, (s, t) in enumerate(new)]
        load_images(client, [spec for spec, _ in new], batch=100)
        tag_many(client, [(spec.id, tag) for spec, tag in new])
        # One more BuildKit build in the new phase: recent cache next to old.
        if buildkit:
            build(engine, BUSYBOX_BASE + "RUN echo new > /new.txt\n", "bench-w1/base:new", timeout=600)
        listed = client.api.images(all=True)
        df = client.api.df()
    notes.append(f"{len(plan)} images loaded from tarballs (100 per load call) on the base's own layers; "
                 "each adds one unique layer of 50 KB-3 MB (seed 1); every 5th tag of a repository is a "
                 "rebuild of `REPO:latest`, leaving the previous one dangling")
    notes.append(f"{containers} containers of old images: {states.count('running')} running (restart=always, "
                 f"so they run again after each restore), {states.count('exited')} exited, "
                 f"{states.count('created')} created")
    notes.append(f"old phase (80% of the loaded images, the builds, the containers), {GAP_SECONDS:.0f} s gap, "
                 "new phase (the other 20% and one more BuildKit build)")
    dangling = sum(1 for i in listed if not [t for t in i.get("RepoTags") or [] if t != "<none>:<none>"])
    return Built(
        "W1",
        cutoff,
        time.perf_counter() - started,
        {"images": len(listed), "dangling": dangling, "tagged": len(listed) - dangling,
         "containers": len(df.get("Containers") or []), "build_cache_records": len(df.get("BuildCache") or []),
         "built_with_buildkit": 2 + len(build_ids) if buildkit else 0},
        notes,
    )


def _container(client, image_id: str, state: str) -> str:
    created = client.api.create_container(
        image_id, command=["/bin/busybox", "sleep", "3600"] if state == "running" else ["/bin/busybox", "true"],
        host_config=client.api.create_host_config(
            network_mode="none",
            restart_policy={"Name": "always"} if state == "running" else None,
        ),
        stop_signal="SIGKILL",
    )
    container_id = created["Id"]
    if state != "created":
        client.api.start(container_id)
    if state == "exited":
        client.api.wait(container_id, timeout=60)
    return container_id


__all__ = ["Built", "build_w1", "build_w2", "multi_image_tarball", "load_images", "run_container"]
