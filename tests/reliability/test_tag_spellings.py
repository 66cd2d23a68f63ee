"""Images with tags in several repositories, registry ports and names the engine normalises
(docker.io/library/x:latest is shown as x:latest), pruned on the real engine: each is deleted
and its removed tags reported exactly as the engine shows them."""

from __future__ import annotations

from contextlib import closing

import pytest

from sparkjoy.executor import Outcome

from tests import fixtures
from tests.reliability.support import inventory, library_prune

CASES = {
    "library latest": ["docker.io/library/plain:latest"],
    "port": ["localhost:5000/a/b:1"],
    "three repos": ["docker.io/library/lib:latest", "localhost:5000/a/b:1", "other/y:2"],
    "two in one repo and one with a port": ["multi/r:1", "multi/r:2", "registry.local:5000/multi/r:1"],
}


@pytest.mark.parametrize("tags", list(CASES.values()), ids=list(CASES))
def test_an_image_with_tags_of_every_spelling_is_deleted_and_reported_exactly(clean_engine, tags):
    engine = clean_engine
    image = fixtures.import_image(engine, 1000, tags)
    with closing(engine.client()) as client:
        shown = client.api.inspect_image(image)["RepoTags"]

    the_plan, result = library_prune(engine.host)

    [outcome] = [r for r in result.results if r.planned.id == image]
    assert outcome.outcome is Outcome.DELETED and image not in inventory(engine).images, outcome
    assert sorted(outcome.removed_tags) == sorted(shown), (outcome.removed_tags, shown)
    assert result.unplanned == () and result.ok, result
