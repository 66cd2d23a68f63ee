"""Helpers shared by the integration tests: run sparkjoy (library and CLI) on the test engine.

Everything here talks to the private engine of tests/engine.py, never the machine's own.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from contextlib import closing, contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Iterator

import docker.errors

from sparkjoy.engine.docker_engine import DockerEngine
from sparkjoy.executor import Executor, Outcome, RunResult
from sparkjoy.model import Kind
from sparkjoy.planner import Decision, Plan, PlannedObject, plan
from sparkjoy.policy import LabelSelector, Policy

from tests.engine import IsolatedEngine
from tests.faultproxy import FaultProxy, Rule

# "Everything counts as old": the planner's documented meaning of a negative max age.
EVERYTHING_OLD = timedelta(seconds=-1)

# The console script of the project's venv; `python -m` is the fallback when run elsewhere.
_SPARKJOY = Path(sys.executable).with_name("sparkjoy")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def sj(engine: IsolatedEngine) -> DockerEngine:
    """sparkjoy's own engine adapter, connected to the test engine."""
    return DockerEngine.connect(host=engine.host)


def policy(**overrides) -> Policy:
    """A Policy; `labels=["k=v"]` may be given as strings."""
    labels = overrides.pop("labels", ())
    return Policy(labels=tuple(LabelSelector.parse(s) if isinstance(s, str) else s for s in labels), **overrides)


def make_plan(engine: IsolatedEngine, pol: Policy, *, now: datetime | None = None,
              adapter: DockerEngine | None = None) -> Plan:
    adapter = adapter or sj(engine)
    snapshot = adapter.snapshot()
    return plan(snapshot, pol, now=now or snapshot.taken_at)


def execute(engine: IsolatedEngine, the_plan: Plan, *, adapter: DockerEngine | None = None) -> RunResult:
    """Run the plan with the audit on, and check the audit is clean."""
    result = Executor(adapter or sj(engine), audit=True).execute(the_plan)
    assert result.audit == (), f"audit found problems: {result.audit}"
    assert not result.stopped_early, result.stopped_early
    return result


def obj(the_plan: Plan, object_id: str) -> PlannedObject:
    [found] = [o for o in the_plan.objects if o.id == object_id]
    return found


def deletion_ids(the_plan: Plan, kind: Kind | None = None) -> set[str]:
    return {o.id for o in the_plan.deletions if kind is None or o.kind is kind}


def outcome_ids(result: RunResult, outcome: Outcome = Outcome.DELETED, kind: Kind | None = None) -> set[str]:
    return {r.planned.id for r in result.results
            if r.outcome is outcome and (kind is None or r.planned.kind is kind)}


def result_of(result: RunResult, object_id: str):
    [found] = [r for r in result.results if r.planned.id == object_id]
    return found


# -- the engine as it is -------------------------------------------------------------------


def tags_of(engine: IsolatedEngine, image_id: str) -> set[str] | None:
    """The image's tags now, or None when the image is gone."""
    with closing(engine.client()) as client:
        try:
            return set(client.api.inspect_image(image_id).get("RepoTags") or [])
        except docker.errors.ImageNotFound:
            return None


def image_ids(engine: IsolatedEngine) -> set[str]:
    with closing(engine.client()) as client:
        return {i["Id"] for i in client.df()["Images"] or []}


def inventory(engine: IsolatedEngine) -> dict[str, set[str]]:
    """Every object the engine lists in /system/df, by kind, as sparkjoy names kinds."""
    with closing(engine.client()) as client:
        df = client.df()
    return {
        Kind.IMAGE.value: {i["Id"] for i in df.get("Images") or []},
        Kind.CONTAINER.value: {c["Id"] for c in df.get("Containers") or []},
        Kind.BUILD_CACHE.value: {r["ID"] for r in df.get("BuildCache") or []},
        Kind.VOLUME.value: {v["Name"] for v in df.get("Volumes") or []},
    }


def build_cache(engine: IsolatedEngine) -> list[dict]:
    with closing(engine.client()) as client:
        return list(client.df().get("BuildCache") or [])


def image_events(engine: IsolatedEngine, since: datetime, until: datetime) -> list[dict]:
    """The engine's own log of image events (tag, untag, delete) in [since, until]."""
    with closing(engine.client()) as client:
        events = list(client.api.events(since=since, until=until, filters={"type": "image"}, decode=True))
    # The API's `since` has whole seconds here: drop what came before `since` itself.
    since_ns = int(since.timestamp() * 1e9)
    return [e for e in events if e.get("timeNano", 0) >= since_ns]


def inspect_image(engine: IsolatedEngine, image_id: str) -> dict:
    with closing(engine.client()) as client:
        return client.api.inspect_image(image_id)


def inspect_container(engine: IsolatedEngine, container_id: str) -> dict:
    with closing(engine.client()) as client:
        return client.api.inspect_container(container_id)


def tag(engine: IsolatedEngine, image_id: str, name: str) -> None:
    repository, _, tag_part = name.rpartition(":")
    with closing(engine.client()) as client:
        assert client.api.tag(image_id, repository, tag_part, force=True)


def remove_image_by_hand(engine: IsolatedEngine, ref: str) -> None:
    with closing(engine.client()) as client:
        client.api.remove_image(ref)


def parse_engine_time(text: str) -> datetime:
    from sparkjoy.engine.convert import parse_time

    parsed = parse_time(text)
    assert parsed is not None, text
    return parsed


# -- through a counting proxy --------------------------------------------------------------


class Through:
    """The test engine as seen through a proxy: what `cli` needs of an engine."""

    def __init__(self, proxy: FaultProxy):
        self.host = proxy.host


@contextmanager
def counting_proxy(engine: IsolatedEngine, method: str, path: str,
                   name: str) -> Iterator[tuple[FaultProxy, Rule, Through]]:
    """A proxy in front of the engine whose rule `name` only counts the `method` requests whose
    path matches `path` (they pass through untouched); yields the proxy, the rule, and the engine
    as `cli` reaches it through the proxy. Each proxy is an engine address of its own, so the
    state database has nothing of it yet."""
    with FaultProxy(engine.socket_path) as proxy:
        rule = proxy.add(Rule(method, path, lambda exchange: exchange.relay(), name=name))
        yield proxy, rule, Through(proxy)


# -- the command line ----------------------------------------------------------------------


def cli(engine: IsolatedEngine, *args: str, expect_exit: int = 0) -> dict:
    """Run `sparkjoy <args> --host <engine> --format json`; return its JSON output.

    The environment is cleared of DOCKER_HOST and friends for the child, so the only way it
    can find an engine is the --host flag pointing at the private one.
    """
    command = [str(_SPARKJOY)] if _SPARKJOY.exists() else [sys.executable, "-m", "sparkjoy"]
    command += [*args, "--host", engine.host, "--format", "json"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")
           and not k.startswith("SPARKJOY_")}
    # An empty config file of our own: no settings from the machine's config files.
    env["SPARKJOY_CONFIG"] = str(_empty_config())
    done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == expect_exit, (
        f"{' '.join(command)} exited {done.returncode}, expected {expect_exit}\n"
        f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    return json.loads(done.stdout)


@functools.cache
def _empty_config() -> Path:
    handle, name = tempfile.mkstemp(prefix="sparkjoy-test-", suffix=".toml")
    os.close(handle)
    return Path(name)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat()


def cli_prune(engine: IsolatedEngine, *args: str, as_of: datetime | None = None, dry_run: bool = False,
              expect_exit: int = 0) -> dict:
    """`sparkjoy prune` with the audit on for real runs; a real run's audit must be clean."""
    flags = list(args)
    if as_of is not None:
        flags += ["--as-of", iso(as_of)]
    flags += ["--dry-run"] if dry_run else ["-f", "--audit"]
    data = cli(engine, "prune", *flags, expect_exit=expect_exit)
    if not dry_run and expect_exit == 0:
        assert data.get("audit") == [], f"audit not clean: {data.get('audit')}"
        assert data["ok"] is True
    return data


def json_objects(data: dict, kind: str | None = None, decision: str | None = None,
                 result: str | None = None) -> list[dict]:
    return [o for o in data["objects"]
            if (kind is None or o["kind"] == kind)
            and (decision is None or o["decision"] == decision)
            and (result is None or o.get("result") == result)]


def json_ids(data: dict, **filters) -> set[str]:
    return {o["id"] for o in json_objects(data, **filters)}


def json_object(data: dict, object_id: str) -> dict:
    [found] = [o for o in data["objects"] if o["id"] == object_id]
    return found


def assert_no_untag_or_delete(events: Iterable[dict], image_id: str) -> None:
    bad = [e for e in events if e.get("id") == image_id and e.get("Action") in ("untag", "delete")]
    assert not bad, f"the engine logged {bad}"


def without(the_plan: Plan, keep_ids: set[str]) -> Plan:
    """The plan with these objects turned into keeps (for subsets of a real plan)."""
    objects = tuple(
        replace(o, decision=Decision.KEEP, reason="kept by the test", bytes=0, bytes_held_by_cache=0)
        if o.id in keep_ids else o
        for o in the_plan.objects)
    return replace(the_plan, objects=objects)
