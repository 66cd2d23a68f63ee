"""The benchmark driver: `bench/run` (see bench/README.md).

    .venv/bin/python -m bench.main [--smoke] [--only w1,w2,w3,daemon] [--runs N] [--rebuild] [--out DIR]
    .venv/bin/python -m bench.main --report-only     # docs/benchmarks.md and the charts from bench/results

Starts an isolated engine (tests/engine.py: its own dockerd, data root, socket and network
namespace; never /var/run/docker.sock), builds each workload once and saves its data root,
restores that data root before every trial, runs every tool on it, and writes
bench/results/*.json and docs/benchmarks.md (with PNG charts).
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import math
import os
import platform
import re
import resource
import shlex
import statistics
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
SPARKJOY = REPO / ".venv" / "bin" / "sparkjoy"
PYTHON = REPO / ".venv" / "bin" / "python"
DOCKER = "/usr/bin/docker"  # the 20.10 CLI that matches the engine (docker.io)
DCGC = REPO / "bench" / ".venv-dcgc" / "bin" / "dcgc"
CACHE = Path(os.environ.get("SPARKJOY_BENCH_CACHE", "/var/tmp/sparkjoy-bench"))
WORKLOAD_VERSION = 3  # bump when a workload's recipe changes: cached data roots are then rebuilt

FULL = {
    "W1": {"loaded_per_repo": 95, "builds_per_repo": 2, "containers": 30, "buildkit": True},
    "W2": {"images": 5000, "old_fraction": 0.8},
    "W3": [1_000, 10_000, 100_000],
}
# Runs per comparison. The whole run must fit a quarter of an hour on 2 cores, and one W2
# prune round (three tools deleting 4,000 images, each after a restore) takes about 3 minutes:
# W2's prunes get no warm-up of their own (W1's prunes, run just before, warm every tool's
# code and the page cache) and two measured rounds; its bytes comparison is left out (its
# image-only prunes give sparkjoy's predicted vs measured and docker's reported bytes).
SCHEDULE = {
    "W1": {"runs": 3, "warmup": 1, "prune_runs": 3, "prune_warmup": 1, "skip": []},
    "W2": {"runs": 2, "warmup": 1, "prune_runs": 2, "prune_warmup": 0, "skip": ["bytes"]},
    "W3": {"runs": 3},
}
SMOKE = {
    "W1": {"loaded_per_repo": 3, "builds_per_repo": 0, "containers": 3, "buildkit": False},
    "W2": {"images": 12, "old_fraction": 0.5},
    "W3": [100, 300],
}


def log(message: str) -> None:
    print(f"[bench {datetime.now(timezone.utc):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# -- running a tool -----------------------------------------------------------------------


def clean_env(host: str) -> dict[str, str]:
    """The environment every tool runs in: pointed at the isolated engine, no user config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "SPARKJOY_"))}
    env["DOCKER_HOST"] = host
    env["HOME"] = str(CACHE / "home")  # no ~/.docker or ~/.config/sparkjoy of the user's
    (CACHE / "home").mkdir(parents=True, exist_ok=True)
    (CACHE / "home" / "empty.toml").touch()
    env["SPARKJOY_CONFIG"] = str(CACHE / "home" / "empty.toml")  # defaults only
    env.pop("XDG_CONFIG_HOME", None)
    # A state database of its own for every environment (as root it would otherwise be the
    # machine's /var/lib/sparkjoy/state.db): it starts empty, so a first run has no cache.
    (CACHE / "state").mkdir(parents=True, exist_ok=True)
    env["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="run-", dir=CACHE / "state")
    return env


def timed(command: list[str], env: dict[str, str], check: bool = True) -> tuple[float, str, int]:
    """Run a command; return (wall seconds, stdout, exit code)."""
    started = time.perf_counter()
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - started
    if check and result.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} exited {result.returncode}: {result.stderr[-2000:]}")
    return took, result.stdout, result.returncode


def engine_cpu_seconds(engine) -> float:
    """The CPU time (user + system) the private dockerd has used so far; 0.0 when unknown."""
    try:
        pid = int(Path(engine.pidfile).read_text().strip())
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def timed_cpu(engine, command: list[str], env: dict[str, str],
              check: bool = True) -> tuple[float, str, int, float, float]:
    """``timed``, and the CPU seconds the engine and the command (with its children) used
    meanwhile: where a tool's time goes, the engine's work or its own."""
    engine_before = engine_cpu_seconds(engine)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    took, out, code = timed(command, env, check)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    return took, out, code, engine_cpu_seconds(engine) - engine_before, client


def shown(command: list[str]) -> str:
    """The command as someone would type it (paths relative to the repository)."""
    text = shlex.join(command)
    return text.replace(str(REPO) + "/", "")


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
        "values": [round(v, 4) for v in values],
    }


# -- engine facts ---------------------------------------------------------------------------


def engine_state(engine) -> dict[str, Any]:
    """Image ids, and the engine's own usage figure (each layer once, unshared cache, rw layers, volumes)."""
    with closing(engine.client()) as client:
        images = client.api.images(all=True)
        df = client.api.df()
    usage = (
        max(df.get("LayersSize") or 0, 0)
        + sum(r.get("Size") or 0 for r in df.get("BuildCache") or [] if not r.get("Shared"))
        + sum(c.get("SizeRw") or 0 for c in df.get("Containers") or [])
        + sum(((v.get("UsageData") or {}).get("Size") or 0) for v in df.get("Volumes") or [] if
              ((v.get("UsageData") or {}).get("Size") or 0) > 0)
    )
    subprocess.run(["sync", "-f", str(engine.data_root)], check=False)
    return {
        "image_ids": sorted(i["Id"] for i in images),
        "containers": len(df.get("Containers") or []),
        "build_cache": len(df.get("BuildCache") or []),
        "engine_bytes": usage,
        "disk_bytes": engine.data_root_bytes(),
    }


def wait_for_running(engine, expected: int, timeout: float = 60) -> None:
    """After a restore, containers with restart=always come back; wait until they run."""
    if not expected:
        return
    deadline = time.monotonic() + timeout
    with closing(engine.client()) as client:
        while time.monotonic() < deadline:
            if len(client.api.containers(filters={"status": "running"})) >= expected:
                return
            time.sleep(0.2)
    raise RuntimeError(f"only some of the {expected} running containers came back after the restore")


_SIZE = re.compile(r"([0-9.]+)\s*([kKMGTP]?B)")
_UNITS = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "PB": 1e15}


def parse_size(text: str) -> int:
    """Docker's human sizes: ``1.234GB`` -> 1234000000 (decimal units, as docker prints them)."""
    match = _SIZE.search(text)
    if not match:
        return 0
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def docker_reclaimable(env: dict[str, str]) -> dict[str, Any]:
    """What `docker system df` says is RECLAIMABLE, per type and in total (its printed, rounded figures)."""
    _, out, _ = timed([DOCKER, "system", "df", "--format", "{{json .}}"], env)
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    per_type = {row["Type"]: {"size": parse_size(row["Size"]), "reclaimable": parse_size(row["Reclaimable"]),
                              "printed": row["Reclaimable"]} for row in rows}
    return {"per_type": per_type, "total": sum(v["reclaimable"] for v in per_type.values())}


# -- workloads, built once and cached -------------------------------------------------------


def cached_workload(engine, name: str, spec: dict, rebuild: bool) -> dict[str, Any]:
    """Build the workload on `engine` (or restore the cached one) and return its description."""
    from bench import workloads

    key = hashlib.sha256(json.dumps([name, spec, WORKLOAD_VERSION], sort_keys=True).encode()).hexdigest()[:12]
    image_file = CACHE / f"{name}-{key}.img"
    meta_file = CACHE / f"{name}-{key}.json"
    if not rebuild and image_file.exists() and meta_file.exists():
        meta = json.loads(meta_file.read_text())
        meta["restore_seconds_first"] = engine.restore(image_file)
        meta["reused_from_cache"] = True
        log(f"{name}: reused the workload built at {meta['built_at']} ({image_file})")
    else:
        log(f"{name}: building {spec}")
        built = workloads.build_w1(engine, **spec) if name == "W1" else workloads.build_w2(engine, **spec)
        meta = {
            "name": name,
            "spec": spec,
            "cutoff": built.cutoff.isoformat(),
            "build_seconds": built.seconds,
            "counts": built.counts,
            "notes": built.notes,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        CACHE.mkdir(parents=True, exist_ok=True)
        meta["save_seconds"] = engine.save(image_file)
        meta_file.write_text(json.dumps(meta, indent=1))
        meta["reused_from_cache"] = False
        log(f"{name}: built in {built.seconds:.0f} s: {built.counts}")
    meta["image_file"] = str(image_file)
    meta["running_containers"] = len(engine.client().api.containers(filters={"status": "running"}))
    return meta


# -- the comparisons ------------------------------------------------------------------------


def compare_df(engine, runs: int, warmup: int) -> dict[str, Any]:
    """`sparkjoy df -v` against `docker system df -v`: the first call after the engine started
    (cold engine; for sparkjoy an empty state database, so no history cache) and the call
    right after it, alternating which tool goes first."""
    tools = {
        "sparkjoy": [str(SPARKJOY), "df", "-v"],
        "docker": [DOCKER, "system", "df", "-v"],
    }
    times: dict[str, dict[str, list[float]]] = {t: {"first": [], "second": []} for t in tools}
    cpu: dict[str, dict[str, list[float]]] = {
        t: {f"{run}_{who}_cpu": [] for run in ("first", "second") for who in ("engine", "client")} for t in tools}
    for trial in range(warmup + runs):
        order = list(tools) if trial % 2 == 0 else list(reversed(tools))
        for tool in order:
            engine.restart_engine()
            env = clean_env(engine.host)
            first, _, _, first_engine, first_client = timed_cpu(engine, tools[tool], env)
            second, _, _, second_engine, second_client = timed_cpu(engine, tools[tool], env)
            if trial >= warmup:
                times[tool]["first"].append(first)
                times[tool]["second"].append(second)
                for key, value in (("first_engine_cpu", first_engine), ("first_client_cpu", first_client),
                                   ("second_engine_cpu", second_engine), ("second_client_cpu", second_client)):
                    cpu[tool][key].append(value)
    result = {tool: {k: summary(v) for k, v in {**by, **cpu[tool]}.items()} for tool, by in times.items()}
    result["ratio"] = {
        k: result["sparkjoy"][k]["median"] / result["docker"][k]["median"] for k in ("first", "second")
    }
    result["commands"] = {t: f"DOCKER_HOST={{host}} {shown(c)}" for t, c in tools.items()}
    return result


def count_api_calls(engine, cutoff: datetime) -> dict[str, Any]:
    """Engine API calls, counted by a proxy on a unix socket: `sparkjoy df` twice (the second
    with the first's history cache), one `docker system df -v`, `dcgc --dry-run`, and two
    snapshots by one DockerEngine that remembers inspects, as the daemon's does (its first
    and later runs)."""
    from bench.proxy import CountingProxy
    from sparkjoy.engine.connect import Connection
    from sparkjoy.engine.docker_engine import DockerEngine

    counts: dict[str, Any] = {}
    with CountingProxy(engine.socket_path, str(engine.tmpdir / "count.sock")) as proxy:
        env = clean_env(proxy.host)
        timed([str(SPARKJOY), "df"], env)
        counts["sparkjoy df"] = dict(proxy.reset())
        timed([str(SPARKJOY), "df"], env)
        counts["sparkjoy df, second run"] = dict(proxy.reset())
        timed([DOCKER, "system", "df", "-v"], env)
        counts["docker system df -v"] = dict(proxy.reset())
        if DCGC.exists():
            timed([str(DCGC), "--max-image-age", dcgc_age(cutoff), "--dry-run"], env, check=False)
            counts["dcgc --dry-run"] = dict(proxy.reset())
        daemon_like = DockerEngine(Connection(proxy.host, "bench"), remember_inspects=True)
        proxy.reset()
        daemon_like.snapshot()
        counts["daemon snapshot, first"] = dict(proxy.reset())
        daemon_like.snapshot()
        counts["daemon snapshot, later (nothing changed)"] = dict(proxy.reset())
    return {name: {"total": sum(c.values()), "by_endpoint": c} for name, c in counts.items()}


def prune_commands(cutoff: datetime) -> dict[str, Callable[[], list[str]]]:
    """The same deletion (unused images last tagged/created before the cutoff) by each tool.

    sparkjoy ages images by last tag time, docker's `until` and dcgc by creation time; the
    workloads make both fall on the same side of the cutoff for every image. Only images:
    no containers, no build cache, keep none per repository."""
    as_of = (cutoff + timedelta(hours=1)).isoformat()
    sparkjoy = [str(SPARKJOY), "prune", "-f", "--no-containers", "--no-build-cache",
                "--keep-recent", "0", "--max-age", "1h", "--as-of", as_of, "--format", "json"]
    commands: dict[str, Callable[[], list[str]]] = {
        "sparkjoy": lambda: sparkjoy,
        WARM: lambda: sparkjoy,
        "docker": lambda: [DOCKER, "image", "prune", "-a", "-f", "--filter", f"until={int(cutoff.timestamp())}"],
    }
    if DCGC.exists():
        commands["dcgc"] = lambda: [str(DCGC), "--max-image-age", dcgc_age(cutoff)]
    return commands


def dcgc_age(cutoff: datetime) -> str:
    """dcgc takes an age, and subtracts it from its own clock once it has started (a second or
    two after launch on a busy machine). The workloads' new images were created at least 1.5 s
    after the cutoff and the old ones minutes before it, so aim 10 s before the cutoff: the
    start-up delay can then never push dcgc's limit past a new image."""
    return f"{math.ceil((datetime.now(timezone.utc) - cutoff).total_seconds()) + 10}s"


# sparkjoy on a host it has run on before: the same prune, after one `sparkjoy df` (not timed)
# on the restored engine, so its state database holds that run's image histories and inspects
# (a real prune reads afresh the images it deletes and those holding keep-recent places).
WARM = "sparkjoy, after a df"


def compare_prune(engine, meta: dict, runs: int, warmup: int) -> dict[str, Any]:
    """Prune wall time for the same deleted set: restore, run one tool, see what went. sparkjoy
    twice: with an empty state database (its first run on a host: every image's inspect, and
    one history per shared base, asked for) and after one `sparkjoy df` (its state from that run)."""
    cutoff = datetime.fromisoformat(meta["cutoff"])
    image_file = Path(meta["image_file"])
    commands = prune_commands(cutoff)
    trials: list[dict[str, Any]] = []
    for trial in range(warmup + runs):
        names = list(commands)
        order = names[trial % len(names):] + names[: trial % len(names)]
        for tool in order:
            restore_seconds = engine.restore(image_file)
            wait_for_running(engine, meta["running_containers"])
            env = clean_env(engine.host)  # an empty state database for every trial
            if tool == WARM:
                timed([str(SPARKJOY), "df"], env)
            before = engine_state(engine)
            command = commands[tool]()
            took, out, code, engine_cpu, client_cpu = timed_cpu(engine, command, env, check=False)
            after = engine_state(engine)
            deleted = sorted(set(before["image_ids"]) - set(after["image_ids"]))
            entry = {
                "tool": tool, "trial": trial, "warmup": trial < warmup, "seconds": took, "exit_code": code,
                "engine_cpu_seconds": engine_cpu, "client_cpu_seconds": client_cpu,
                "restore_seconds": restore_seconds, "deleted_images": len(deleted),
                "deleted_set": hashlib.sha256("\n".join(deleted).encode()).hexdigest()[:16],
                "engine_bytes_freed": before["engine_bytes"] - after["engine_bytes"],
                "disk_bytes_freed": before["disk_bytes"] - after["disk_bytes"],
                "containers_left": after["containers"] == before["containers"],
                "build_cache_left": after["build_cache"] == before["build_cache"],
                "command": shown(command),
            }
            if tool.startswith("sparkjoy"):
                try:
                    data = json.loads(out)
                    entry["predicted_bytes"] = data.get("predicted_bytes")
                    entry["reported_reclaimed_bytes"] = data.get("reclaimed_bytes")
                except json.JSONDecodeError:
                    entry["output_tail"] = out[-500:]
            elif tool == "docker":
                entry["reported_reclaimed_bytes"] = parse_size(out.rsplit("Total reclaimed space:", 1)[-1])
            trials.append(entry)
            log(f"  prune {tool} trial {trial}: {took:.2f} s, {len(deleted)} images deleted")
    measured = [t for t in trials if not t["warmup"]]
    result: dict[str, Any] = {"trials": trials, "tools": {}}
    for tool in commands:
        mine = [t for t in measured if t["tool"] == tool]
        result["tools"][tool] = {"seconds": summary([t["seconds"] for t in mine]),
                                 "engine_cpu_seconds": summary([t["engine_cpu_seconds"] for t in mine]),
                                 "client_cpu_seconds": summary([t["client_cpu_seconds"] for t in mine]),
                                 "deleted_images": mine[0]["deleted_images"] if mine else 0}
    sets = {t["deleted_set"] for t in trials}
    counts = {t["tool"]: t["deleted_images"] for t in trials}
    result["same_deleted_set"] = len(sets) == 1
    result["deleted_counts"] = counts
    others = {tool: r["seconds"]["median"] for tool, r in result["tools"].items() if not tool.startswith("sparkjoy")}
    base = result["tools"]["sparkjoy"]["seconds"]["median"]
    result["ratio"] = {tool: base / seconds for tool, seconds in others.items()}
    warm = result["tools"][WARM]["seconds"]["median"]
    result["ratio_warm"] = {tool: warm / seconds for tool, seconds in others.items()}
    result["commands"] = {tool: f"DOCKER_HOST={{host}} {shown(c())}" for tool, c in commands.items() if tool != WARM}
    result["commands"]["sparkjoy, after a df"] = (f"DOCKER_HOST={{host}} {shown([str(SPARKJOY), 'df'])} && "
                                                  f"DOCKER_HOST={{host}} {shown(commands[WARM]())}")
    return result


def compare_bytes(engine, meta: dict) -> dict[str, Any]:
    """Predicted vs measured bytes freed. sparkjoy: its plan's prediction against the engine's
    usage and the data root's file system before and after. docker: `docker system df`
    RECLAIMABLE against what `docker system prune -a -f` then frees."""
    cutoff = datetime.fromisoformat(meta["cutoff"])
    image_file = Path(meta["image_file"])
    env = clean_env(engine.host)
    scenarios = {
        "sparkjoy default kinds, cutoff policy": [str(SPARKJOY), "prune", "-f", "--max-age", "1h", "--as-of",
                                                  (cutoff + timedelta(hours=1)).isoformat(), "--format", "json"],
        "sparkjoy everything unused": [str(SPARKJOY), "prune", "-f", "--max-age=-1s", "--keep-recent", "0",
                                       "--format", "json"],
        "docker system prune -a": [DOCKER, "system", "prune", "-a", "-f"],
    }
    results = {}
    for name, command in scenarios.items():
        engine.restore(image_file)
        wait_for_running(engine, meta["running_containers"])
        claimed = docker_reclaimable(env)
        before = engine_state(engine)
        took, out, code = timed(command, env, check=False)
        after = engine_state(engine)
        entry: dict[str, Any] = {
            "command": shown(command), "seconds": took, "exit_code": code,
            "measured_engine_bytes": before["engine_bytes"] - after["engine_bytes"],
            "measured_disk_bytes": before["disk_bytes"] - after["disk_bytes"],
            "deleted_images": len(set(before["image_ids"]) - set(after["image_ids"])),
            "docker_df_reclaimable_before": claimed,
        }
        if name.startswith("sparkjoy"):
            data = json.loads(out)
            entry["predicted_bytes"] = data["predicted_bytes"]
            entry["reported_reclaimed_bytes"] = data["reclaimed_bytes"]
            entry["held_by_cache_bytes"] = data.get("held_by_cache_bytes")
            entry["error_vs_engine"] = _relative(entry["predicted_bytes"], entry["measured_engine_bytes"])
        else:
            entry["reported_reclaimed_bytes"] = parse_size(out.rsplit("Total reclaimed space:", 1)[-1])
            entry["reclaimable_error_vs_engine"] = _relative(claimed["total"], entry["measured_engine_bytes"])
        results[name] = entry
        log(f"  bytes {name}: measured {entry['measured_engine_bytes']} B")
    return results


def _relative(predicted: int, measured: int) -> float | None:
    return (predicted - measured) / measured if measured else None


# -- W3 and the daemon -------------------------------------------------------------------------


def planner_scaling(scales: list[int], runs: int) -> list[dict[str, Any]]:
    """One fresh process per scale: `python -m bench.synthetic N RUNS`."""
    results = []
    for images in scales:
        started = time.perf_counter()
        out = subprocess.run([str(PYTHON), "-m", "bench.synthetic", str(images), str(runs)], cwd=REPO,
                             capture_output=True, text=True, check=True)
        data = json.loads(out.stdout.strip().splitlines()[-1])
        data["process_seconds"] = time.perf_counter() - started
        results.append(data)
        log(f"W3 {images}: plan {data['plan_seconds_median']:.3f} s, peak {data['plan_peak_bytes_tracemalloc'] / 1e6:.0f} MB")
    return results


def daemon_available() -> bool:
    result = subprocess.run([str(SPARKJOY), "run", "--help"], capture_output=True, text=True)
    return result.returncode == 0


# -- the machine --------------------------------------------------------------------------------


class LoadSampler:
    """Samples /proc/loadavg and the number of other dockerd processes while the bench runs."""

    def __init__(self, interval: float = 5.0):
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            load1 = float(Path("/proc/loadavg").read_text().split()[0])
            dockerds = subprocess.run(["pgrep", "-c", "-x", "dockerd"], capture_output=True, text=True).stdout.strip()
            self.samples.append({"t": time.time(), "load1": load1, "dockerd_processes": int(dockerds or 0)})
            self._stop.wait(self.interval)

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        loads = [s["load1"] for s in self.samples] or [0.0]
        dockerds = [s["dockerd_processes"] for s in self.samples] or [0]
        return {"load1_min": min(loads), "load1_median": statistics.median(loads), "load1_max": max(loads),
                "other_dockerd_max": max(dockerds) - 1, "samples": len(self.samples)}


def machine_info(engine_version: str) -> dict[str, Any]:
    def run(command: list[str]) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    dcgc_version = run([str(REPO / "bench" / ".venv-dcgc" / "bin" / "pip"), "show", "docker-custodian"]) if DCGC.exists() else ""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
        "engine": engine_version,
        "docker_cli": run([DOCKER, "--version"]),
        "python": platform.python_version(),
        "sparkjoy_commit": run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "dcgc": next((l.split(":", 1)[1].strip() for l in dcgc_version.splitlines() if l.startswith("Version")), "not installed"),
        "data_root": "ext4 on a loop-mounted sparse file (restored by copying the file before each trial)",
    }


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny workloads, one run: checks the scripts work")
    parser.add_argument("--only", default="w1,w2,w3,daemon", help="comma-separated: w1,w2,w3,daemon")
    parser.add_argument("--runs", type=int, default=None, help="measured runs per comparison, every "
                        "workload (default: SCHEDULE in bench/main.py; smoke 1)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up runs, not counted (default: SCHEDULE; smoke 0)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild workloads even when cached")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: df,calls,prune,bytes")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default bench/results; "
                        "docs/benchmarks.md is written only for the default)")
    parser.add_argument("--report-only", action="store_true", help="regenerate docs from existing results")
    parser.add_argument("--build-only", action="store_true", help="build (and cache) the engine workloads, measure nothing")
    args = parser.parse_args(argv)

    from bench import report

    out = args.out or REPO / "bench" / "results"
    docs = REPO / "docs" if args.out is None else out
    if args.report_only:
        report.write(out, docs)
        return 0
    sizes = SMOKE if args.smoke else FULL
    schedule = json.loads(json.dumps(SCHEDULE))
    for name, plan in schedule.items():
        if args.smoke:
            plan.update(runs=1, warmup=0, prune_runs=1, prune_warmup=0, skip=[])
        for key in ("runs", "prune_runs"):
            if args.runs is not None and key in plan:
                plan[key] = args.runs
        for key in ("warmup", "prune_warmup"):
            if args.warmup is not None and key in plan:
                plan[key] = args.warmup
    only = {p.strip().lower() for p in args.only.split(",") if p.strip()}
    skip = {p.strip().lower() for p in args.skip.split(",") if p.strip()}
    if args.build_only:
        only &= {"w1", "w2"}
    out.mkdir(parents=True, exist_ok=True)
    global CACHE
    if args.smoke:
        # Tiny workloads, built afresh each time beside the results, and removed at exit: a
        # smoke run (the test suite makes one) leaves no file system images behind.
        CACHE = Path(tempfile.mkdtemp(prefix="sjbench-smoke-", dir=out))
        atexit.register(shutil.rmtree, CACHE, True)

    from bench.engines import BenchEngine

    started = datetime.now(timezone.utc)
    with LoadSampler() as sampler:
        if "w3" in only:
            log("W3: planner alone at " + ", ".join(map(str, sizes["W3"])))
            w3 = planner_scaling(sizes["W3"], schedule["W3"]["runs"])
            _write(out / "w3.json", {"scales": w3, "smoke": args.smoke})
        engine_version = ""
        for name in ("W1", "W2"):
            if name.lower() not in only:
                continue
            engine = BenchEngine().start()
            try:
                engine_version = engine.version()
                meta = cached_workload(engine, name, sizes[name], args.rebuild)
                if args.build_only:
                    continue
                plan = schedule[name]
                skipped = skip | set(plan["skip"])
                result: dict[str, Any] = {"workload": meta, "schedule": plan, "smoke": args.smoke,
                                          "runs": plan["runs"], "warmup": plan["warmup"]}
                if "df" not in skipped:
                    log(f"{name}: sparkjoy df vs docker system df -v")
                    result["df"] = compare_df(engine, plan["runs"], plan["warmup"])
                    log(f"{name}: df ratio {result['df']['ratio']}")
                if "calls" not in skipped:
                    result["api_calls"] = count_api_calls(engine, datetime.fromisoformat(meta["cutoff"]))
                if "prune" not in skipped:
                    log(f"{name}: prune, same deleted set")
                    result["prune"] = compare_prune(engine, meta, plan["prune_runs"], plan["prune_warmup"])
                    log(f"{name}: prune ratios {result['prune']['ratio']}, same set: {result['prune']['same_deleted_set']}")
                if "bytes" not in skipped:
                    log(f"{name}: predicted vs measured bytes")
                    result["bytes"] = compare_bytes(engine, meta)
                _write(out / f"{name.lower()}.json", result)
            finally:
                engine.stop()
        if "daemon" in only and not args.smoke:
            from bench import daemon_bench

            w1_meta = _w1_meta(out, sizes)
            if daemon_available() and w1_meta:
                log("daemon: idle CPU/RSS over 60 s, events per second")
                _write(out / "daemon.json", daemon_bench.measure(
                    Path(w1_meta["image_file"]), w1_meta.get("running_containers", 0), SPARKJOY, clean_env))
            else:
                _write(out / "daemon.json", {"available": False})
    if args.build_only:
        return 0
    machine = machine_info(engine_version)
    machine["started"] = started.isoformat(timespec="seconds")
    machine["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    machine["load"] = sampler.summary()
    machine["smoke"] = args.smoke
    previous = json.loads((out / "machine.json").read_text()) if (out / "machine.json").exists() else {}
    machine["parts"] = sorted(only) if not previous or previous.get("smoke") != args.smoke else sorted(
        set(previous.get("parts", [])) | only)
    _write(out / "machine.json", machine)
    report.write(out, docs)
    log(f"results in {out}, report {docs / 'benchmarks.md'}")
    return 0


def _w1_meta(out: Path, sizes: dict) -> dict[str, Any] | None:
    """The cached W1 workload (the daemon is measured on it), from this run's results or the cache."""
    if (out / "w1.json").exists():
        meta = json.loads((out / "w1.json").read_text())["workload"]
        if Path(meta["image_file"]).exists():
            return meta
    key = hashlib.sha256(json.dumps(["W1", sizes["W1"], WORKLOAD_VERSION], sort_keys=True).encode()).hexdigest()[:12]
    meta_file = CACHE / f"W1-{key}.json"
    if meta_file.exists() and (CACHE / f"W1-{key}.img").exists():
        meta = json.loads(meta_file.read_text())
        meta["image_file"] = str(CACHE / f"W1-{key}.img")
        return meta
    return None


def _write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
