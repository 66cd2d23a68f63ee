"""The daemon (`sparkjoy run`): idle CPU and RSS over 60 s, and events handled per second.

Idle: the real `sparkjoy run` process against a restored W1 engine (its ~300 images seen
at start-up), with pruning far in the future (interval and quiet period 24 h), so it only
follows the event stream, answers health checks and pings the engine. After it is ready
and has settled, its CPU time (utime + stime of all its threads, /proc/PID/stat) and RSS
(/proc/PID/status, sampled every second) are read over the window.

Events: the engine keeps only its last 256 events and emits them only as fast as things
happen, so a burst of thousands cannot be replayed through it. The daemon's own event path
is driven in this process instead, exactly as the supervisor drives it (`Supervisor._learn`):
JSON lines decoded, `observe`, `EventInterpreter.learn` with the real `DockerResolver` on the
W1 engine (its engine calls included), `State.record_events` into a SQLite state database,
in batches of 500 (what one loop tick drains under a burst). The stream is CI-like: container
lifecycles (create, attach, start, die, destroy) of short-lived containers already gone when
resolved (so each is resolved through its image reference), and image tag events of real
images.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

IDLE_SECONDS = 60
SETTLE_SECONDS = 5
BATCH = 500


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command: state is field 3, so utime (14) and stime (15) are at 11 and 12 here.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def idle(engine, sparkjoy: Path, env: dict[str, str], seconds: int = IDLE_SECONDS) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="sjdaemon"))
    port = _free_port()
    command = [str(sparkjoy), "run", "--host", engine.host, "--state-db", str(workdir / "state.db"),
               "--listen", f"127.0.0.1:{port}", "--interval", "24h", "--quiet-period", "24h"]
    with open(workdir / "daemon.log", "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"sparkjoy run exited {process.returncode}: "
                                   + (workdir / "daemon.log").read_text()[-2000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("sparkjoy run was not ready within 60 s")
            time.sleep(0.2)
        ready_after = 60 - (deadline - time.monotonic())
        time.sleep(SETTLE_SECONDS)
        cpu_start, wall_start = _cpu_seconds(process.pid), time.monotonic()
        rss = []
        while time.monotonic() - wall_start < seconds:
            rss.append(_rss_bytes(process.pid))
            time.sleep(1)
        cpu = _cpu_seconds(process.pid) - cpu_start
        window = time.monotonic() - wall_start
        return {
            "command": " ".join(command).replace(engine.host, "{host}"),
            "ready_after_seconds": round(ready_after, 2),
            "window_seconds": window,
            "cpu_seconds": cpu,
            "cpu_percent_of_one_core": cpu / window * 100,
            "rss_max_bytes": max(rss),
            "rss_end_bytes": rss[-1],
        }
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def synthetic_events(image_tags: list[tuple[str, str]], lifetimes: int, tags: int, seed: int = 5) -> list[str]:
    """JSON lines like the engine's /events stream: container lifecycles and image tags."""
    rng = random.Random(seed)
    lines = []
    nanos = int(datetime(2026, 12, 1, tzinfo=timezone.utc).timestamp() * 1e9)
    for index in range(lifetimes):
        image_id, tag = image_tags[rng.randrange(len(image_tags))]
        container = "%064x" % rng.getrandbits(256)
        for action in ("create", "attach", "start", "die", "destroy"):
            nanos += 1_000_000
            lines.append(json.dumps({
                "status": action, "id": container, "from": tag, "Type": "container", "Action": action,
                "Actor": {"ID": container, "Attributes": {"image": tag, "name": f"job-{index}"}},
                "scope": "local", "time": nanos // 1_000_000_000, "timeNano": nanos,
            }))
        if index % max(1, lifetimes // max(tags, 1)) == 0:
            nanos += 1_000_000
            lines.append(json.dumps({
                "status": "tag", "id": image_id, "Type": "image", "Action": "tag",
                "Actor": {"ID": image_id, "Attributes": {"name": tag}},
                "scope": "local", "time": nanos // 1_000_000_000, "timeNano": nanos,
            }))
    return lines


def events(engine, lifetimes: int = 3000, tags: int = 600) -> dict[str, Any]:
    from sparkjoy.daemon.events import DockerResolver, EventInterpreter, observe
    from sparkjoy.engine.connect import Connection
    from sparkjoy.engine.docker_engine import DockerEngine
    from sparkjoy.policy import Policy
    from sparkjoy.state import State

    api_engine = DockerEngine(Connection(engine.host, "bench"))
    listed = api_engine.read("list images", "/images/json")
    image_tags = [(i["Id"], t) for i in listed for t in (i.get("RepoTags") or []) if t != "<none>:<none>"]
    lines = synthetic_events(image_tags, lifetimes, tags)
    workdir = Path(tempfile.mkdtemp(prefix="sjevents"))
    state = State.open(workdir / "state.db", engine.host)
    interpreter = EventInterpreter(DockerResolver(api_engine), Policy())
    learned_uses = 0
    started = time.perf_counter()
    for start in range(0, len(lines), BATCH):
        decoded = [json.loads(line) for line in lines[start:start + BATCH]]
        observations = [o for o in (observe(e) for e in decoded) if o is not None]
        learned = interpreter.learn(observations)
        nanos = max((o.nanos for o in observations), default=None)
        state.record_events(learned.uses, learned.builds, nanos, datetime.now(timezone.utc))
        learned_uses += len(learned.uses)
    took = time.perf_counter() - started
    state.close()
    return {
        "events": len(lines),
        "seconds": took,
        "events_per_second": len(lines) / took,
        "container_lifetimes": lifetimes,
        "image_tag_events": sum(1 for line in lines if '"Action": "tag"' in line),
        "batch": BATCH,
        "image_uses_recorded": learned_uses,
    }


def measure(image_file: Path, running_containers: int, sparkjoy: Path, env_for) -> dict[str, Any]:
    from bench.engines import BenchEngine

    engine = BenchEngine().start()
    try:
        engine.restore(image_file)
        result: dict[str, Any] = {"available": True, "method": [
            "idle: `sparkjoy run` (interval and quiet period 24 h, so no prune) against a restored W1 engine; "
            f"after /readyz answers and {SETTLE_SECONDS} s more, CPU (utime+stime, all threads) and RSS "
            f"(sampled every second) over {IDLE_SECONDS} s",
            "events: the daemon's event path (decode, observe, EventInterpreter.learn with the real "
            f"DockerResolver on the W1 engine, State.record_events in SQLite) driven in-process, {BATCH} events "
            "per batch; the engine itself cannot replay a burst (it keeps only its last 256 events)",
        ]}
        result["idle"] = idle(engine, sparkjoy, env_for(engine.host))
        result["events"] = events(engine)
        return result
    finally:
        engine.stop()
