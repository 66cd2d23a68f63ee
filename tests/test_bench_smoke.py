"""The benchmark scripts still run: `bench/run --smoke` on tiny workloads.

Benchmarks are never part of pass/fail (their numbers depend on the machine); this only
checks that the driver builds its workloads on a private engine, runs every comparison,
finds the tools deleting the same images, and writes its results and report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.main import engine_cpu_seconds

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.engine
def test_the_benchmark_scripts_run_on_a_tiny_workload(tmp_path: Path, engine) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.main", "--smoke", "--only", "w1,w2,w3", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    for name in ("w1", "w2"):
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["prune"]["same_deleted_set"], data["prune"]["deleted_counts"]
        assert data["prune"]["tools"]["sparkjoy"]["deleted_images"] > 0
        assert data["df"]["sparkjoy"]["first"]["runs"] == 1
        # Where the time goes: the engine's CPU and the tool's, per trial. The engine's is read
        # in its clock ticks (10 ms): one tiny prune may take less than one (docker's did, and
        # this failed), so each figure here is only >= 0; that it is read at all is checked below.
        assert all(t["engine_cpu_seconds"]["median"] >= 0 for t in data["prune"]["tools"].values())
        assert data["df"]["sparkjoy"]["first_client_cpu"]["median"] > 0
        assert data["api_calls"]["sparkjoy df"]["by_endpoint"]["GET /system/df"] == 1
        for scenario in data["bytes"].values():
            assert scenario["exit_code"] == 0, scenario
    # The engine's CPU is read from /proc (0.0 when it cannot be): a dockerd that has started
    # has used far more than a tick.
    assert engine_cpu_seconds(engine) > 0
    scales = json.loads((tmp_path / "w3.json").read_text())["scales"]
    assert [s["images"] for s in scales] == [100, 300]
    report = (tmp_path / "benchmarks.md").read_text()
    assert "## Headline" in report and "## W3" in report
    # The smoke workloads' file system images (tens of MB each) are gone once the run ends.
    assert not list(tmp_path.glob("sjbench-smoke-*"))


@pytest.mark.engine
def test_the_daemon_event_benchmark_resolves_images_through_the_real_resolver(clean_engine) -> None:
    """bench/daemon_bench.events drives the daemon's event path with the real DockerResolver:
    the images its events name must be resolved (a resolver that fails answers None, quickly,
    and would make the events-per-second figure meaningless)."""
    from bench.daemon_bench import events
    from tests.fixtures import import_image

    for n in range(3):
        import_image(clean_engine, 1000, f"bench-events/app:{n}", seed=400 + n)
    # One tag event only: every other use comes from a container event naming its image by
    # tag, which only the resolver turns into an image ID.
    result = events(clean_engine, lifetimes=30, tags=0)
    assert result["events"] == 30 * 5 + 1
    assert result["image_uses_recorded"] == 3, result
