"""Fixtures of the reliability suite: the fault proxy, and the tally behind docs/reliability.md.

Each test adds what it measured (faults injected, race rounds, hostile answers tried,
objects checked, objects lost) to the tally under its node id; at the end of the session
the entries are merged into `.reliability-counts.json` at the repository root (git-ignored),
from which `scripts/reliability-figures` writes the figures into docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine import IsolatedEngine
from tests.faultproxy import FaultProxy

COUNTS_FILE = Path(__file__).resolve().parents[2] / ".reliability-counts.json"
PASSED = pytest.StashKey[bool]()


class Tally:
    def __init__(self) -> None:
        self.entries: dict[str, Counter[str]] = {}
        self.passed: dict[str, bool] = {}

    def add(self, nodeid: str, **counts: int) -> None:
        entry = self.entries.setdefault(nodeid, Counter())
        for name, value in counts.items():
            entry[name] += value


_TALLY = Tally()


@pytest.fixture(scope="session")
def tally() -> Iterator[Tally]:
    yield _TALLY


@pytest.fixture
def count(request: pytest.FixtureRequest, tally: Tally):
    """`count(rounds=1, objects_lost=0, ...)`: add to this test's tally entry."""
    return lambda **counts: tally.add(request.node.nodeid, **counts)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[PASSED] = report.passed
    if report.when == "teardown" and item.nodeid in _TALLY.entries:
        _TALLY.passed[item.nodeid] = item.stash.get(PASSED, False) and report.passed


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _TALLY.entries:
        return
    try:
        data = json.loads(COUNTS_FILE.read_text())
    except (OSError, ValueError):
        data = {}
    tests = data.get("tests", {})
    for nodeid, entry in _TALLY.entries.items():
        tests[nodeid] = {"passed": _TALLY.passed.get(nodeid, False), **dict(sorted(entry.items())),
                         "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    data["tests"] = dict(sorted(tests.items()))
    temporary = COUNTS_FILE.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(temporary, COUNTS_FILE)


@pytest.fixture
def proxy(clean_engine: IsolatedEngine, count) -> Iterator[FaultProxy]:
    """A fault proxy in front of the (wiped) test engine; `proxy.host` is its DOCKER_HOST.

    Add rules with `proxy.add(Rule(...))`, remove them with `proxy.clear()`. The faults it
    injected are added to the tally when the test ends.
    """
    fault_proxy = FaultProxy(clean_engine.socket_path).start()
    try:
        yield fault_proxy
    finally:
        fault_proxy.stop()
        count(faults_injected=fault_proxy.total_injected,
              **{f"fault: {name}": n for name, n in fault_proxy.injected.items()})


faulty_engine = proxy  # the name the issue uses
