"""W3: synthetic snapshots for the planner alone (no engine), built from sparkjoy.model objects.

`python -m bench.synthetic N` plans a snapshot of N images (and 2N build-cache records) in
this fresh process and prints one JSON line: the time of `planner.plan` (warm-up, then
several runs: median and spread) and its peak memory (tracemalloc, in a separate run), and
the process's peak RSS. One process per scale keeps the scales from sharing memory.

The shape follows a busy CI host: 20 repositories, each on one of 10 base-layer stacks
(so a base layer is shared by thousands of images), 1-3 unique layers per image, half the
images dangling (rebuilt tags), a tenth with a parent (classic builder), last-tag times
spread over 30 days, a container per 100 images, and BuildKit-like cache records: a third
holding an image layer (shared, matched by size), the rest unshared, in parent chains.
"""

from __future__ import annotations

import gc
import json
import random
import resource
import statistics
import sys
import time
import tracemalloc
from datetime import datetime, timedelta, timezone

from sparkjoy.model import BuildCacheRecord, Container, ContainerState, Image, Layer, Snapshot, Volume
from sparkjoy.planner import plan
from sparkjoy.policy import Policy

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _hex(rng: random.Random) -> str:
    return "%064x" % rng.getrandbits(256)


def make_snapshot(images: int, seed: int = 3) -> Snapshot:
    """Given a number of images, return a snapshot with them, 2x as many cache records, and containers."""
    rng = random.Random(seed)
    bases = []
    for _ in range(10):
        # Two base layers each; sizes distinct from every other layer so matching is unambiguous.
        bases.append([Layer("sha256:" + _hex(rng), rng.randint(5_000_000, 80_000_000)) for _ in range(2)])
    image_list: list[Image] = []
    all_layers: list[Layer] = []
    for index in range(images):
        repo = f"registry.example:5000/team/app{index % 20}"
        base = bases[index % 10]
        unique = [Layer("sha256:" + _hex(rng), rng.randint(1_000, 50_000_000)) for _ in range(rng.randint(1, 3))]
        all_layers.extend(unique)
        tagged = index % 2 == 0
        when = NOW - timedelta(seconds=rng.randint(0, 30 * 86_400))
        parent = image_list[-1].id if index % 10 == 9 and image_list else ""
        layers = tuple(base + unique)
        size = sum(layer.size for layer in layers)
        image_list.append(
            Image(
                id="sha256:" + _hex(rng),
                repo_tags=(f"{repo}:build-{index}",) if tagged else (),
                created=when - timedelta(minutes=5),
                last_tag_time=when,
                size=size,
                shared_size=sum(layer.size for layer in base),
                labels={"team": f"t{index % 7}"},
                parent_id=parent,
                layers=layers,
            )
        )
    containers = []
    states = [ContainerState.RUNNING, ContainerState.EXITED, ContainerState.CREATED]
    for index in range(max(1, images // 100)):
        image = image_list[rng.randrange(len(image_list))]
        state = states[index % 3]
        containers.append(
            Container(
                id=_hex(rng),
                names=(f"c{index}",),
                image_id=image.id,
                image_ref=image.repo_tags[0] if image.repo_tags else image.id,
                state=state,
                created=NOW - timedelta(hours=rng.randint(1, 500)),
                finished=NOW - timedelta(hours=rng.randint(1, 400)) if state is ContainerState.EXITED else None,
                size_rw=rng.randint(0, 10_000_000),
                volumes=(f"vol{index}",) if index % 4 == 0 else (),
            )
        )
    records = []
    previous = ""
    for index in range(2 * images):
        shared = index % 3 == 0
        layer = all_layers[rng.randrange(len(all_layers))] if shared else None
        last_used = NOW - timedelta(seconds=rng.randint(0, 30 * 86_400))
        # Chains of up to 5 records, like a multi-step build.
        parent = previous if index % 5 else ""
        record_id = "%025x" % rng.getrandbits(100)
        records.append(
            BuildCacheRecord(
                id=record_id,
                parent=parent,
                type="regular" if shared else rng.choice(["source.local", "exec.cachemount", "regular"]),
                description=f"step {index}",
                in_use=index % 97 == 0,
                shared=shared,
                size=layer.size if layer else rng.randint(0, 20_000_000),
                created=last_used - timedelta(minutes=1),
                last_used=last_used,
                usage_count=rng.randint(1, 9),
            )
        )
        previous = record_id
    volumes = [
        Volume(name=f"vol{index}", driver="local", created=NOW - timedelta(days=3), size=1_000_000, ref_count=1)
        for index in range(0, len(containers), 4)
    ]
    layers_size = sum(layer.size for base in bases for layer in base) + sum(layer.size for layer in all_layers)
    return Snapshot(
        taken_at=NOW,
        images=tuple(image_list),
        containers=tuple(containers),
        build_cache=tuple(records),
        volumes=tuple(volumes),
        layers_size=layers_size,
    )


def measure(images: int, runs: int = 3) -> dict:
    started = time.perf_counter()
    snapshot = make_snapshot(images)
    build_seconds = time.perf_counter() - started
    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    policy = Policy(max_age=timedelta(days=7), keep_recent=2)
    gc.collect()
    timings = []
    deletions = 0
    for attempt in range(runs + 1):  # the first is the warm-up
        started = time.perf_counter()
        result = plan(snapshot, policy, now=NOW)
        took = time.perf_counter() - started
        deletions = len(result.deletions)
        del result
        gc.collect()
        if attempt:
            timings.append(took)
    rss_after_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    result = plan(snapshot, policy, now=NOW)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "images": images,
        "build_cache_records": len(snapshot.build_cache),
        "containers": len(snapshot.containers),
        "deletions": deletions,
        "snapshot_build_seconds": round(build_seconds, 3),
        "plan_seconds": timings,
        "plan_seconds_median": statistics.median(timings),
        "plan_peak_bytes_tracemalloc": peak,
        "process_peak_rss_bytes": rss_after_kib * 1024,
        "process_peak_rss_before_planning_bytes": rss_before_kib * 1024,
    }


if __name__ == "__main__":
    count = int(sys.argv[1])
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    print(json.dumps(measure(count, runs)))
