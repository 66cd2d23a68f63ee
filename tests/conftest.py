"""Fixtures for tests against a real, private Docker engine.

- `engine`: one IsolatedEngine for the whole session (stopped at the end, even when
  tests fail). If it cannot start, every test that needs it errors: CI must never go
  green without an engine, so there is deliberately no skip.
- `clean_engine`: the same engine, wiped before the test (containers, images, build
  cache, volumes, networks). Use it whenever a test counts or prunes things.
- `engine_factory`: more engines of a test's own (say, with a small data root for
  disk pressure), stopped when the test ends.

Tests that use any of these are marked `engine` automatically, so `-m "not engine"`
runs only the fast tests.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import docker.errors
import pytest

from tests.engine import IsolatedEngine

ENGINE_FIXTURES = {"engine", "clean_engine", "engine_factory"}

# Image removal can meet 409s the first time round (a parent still has children
# made by the classic builder); each pass removes the leaves, so a few passes do.
MAX_IMAGE_REMOVAL_PASSES = 10


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "engine: the test needs the private Docker engine")
    # sparkjoy remembers first sightings and last use in a state database (as root by
    # default /var/lib/sparkjoy/state.db). Tests keep theirs in a directory of the session's
    # own, inherited by every sparkjoy process they start, so they never write the machine's.
    os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="sparkjoy-state-")


def pytest_unconfigure(config: pytest.Config) -> None:
    state_home = os.environ.get("XDG_STATE_HOME", "")
    if Path(state_home).name.startswith("sparkjoy-state-"):
        shutil.rmtree(state_home, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.engine)


@pytest.fixture(scope="session")
def engine() -> Iterator[IsolatedEngine]:
    # start() raises EngineError with dockerd's log tail; pytest reports it as an
    # error for each test that asked for the engine.
    isolated = IsolatedEngine().start()
    try:
        yield isolated
    finally:
        isolated.stop()


@pytest.fixture
def clean_engine(engine: IsolatedEngine) -> IsolatedEngine:
    wipe(engine)
    return engine


@pytest.fixture
def engine_factory() -> Iterator[Callable[..., IsolatedEngine]]:
    started: list[IsolatedEngine] = []

    def start(**kwargs) -> IsolatedEngine:
        isolated = IsolatedEngine(**kwargs)
        started.append(isolated)  # before start(): stop() also cleans a failed start
        return isolated.start()

    yield start
    for isolated in started:
        isolated.stop()


def wipe(engine: IsolatedEngine) -> None:
    """Remove everything from the engine, then check that it really is empty.

    Forcing is fine here: this is the private test engine, never the user's.
    """
    with closing(engine.client()) as client:
        for container in client.containers.list(all=True):
            container.remove(force=True, v=True)

        for _ in range(MAX_IMAGE_REMOVAL_PASSES):
            images = client.api.images(all=True, quiet=True)
            if not images:
                break
            for image_id in images:
                try:
                    client.api.remove_image(image_id, force=True)
                except docker.errors.NotFound:
                    pass  # went with an image removed earlier in this pass
                except docker.errors.APIError as error:
                    if error.status_code != 409:  # 409: has children, next pass
                        raise

        client.api.prune_builds(all=True)
        for volume in client.volumes.list():
            volume.remove(force=True)
        client.networks.prune()

        left = {
            "containers": client.containers.list(all=True),
            "images": client.api.images(all=True, quiet=True),
            "build cache": client.df().get("BuildCache") or [],
            "volumes": client.volumes.list(),
        }
        left = {kind: objects for kind, objects in left.items() if objects}
        if left:
            raise RuntimeError(f"could not wipe the test engine, left: {left}")
