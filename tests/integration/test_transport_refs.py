"""The http.client transport (engine/transport.py) on the real (private) engine: image
references with a registry port, and query booleans the engine must read as false."""

from __future__ import annotations

import pytest

from sparkjoy.errors import EngineConflict, EngineError, EngineNotFound

from tests.fixtures import busybox_image, import_image, run_container
from tests.integration.support import sj


def test_a_tag_with_a_registry_port_and_path_is_untagged_alone(clean_engine):
    image = import_image(clean_engine, 1000, ["localhost:5000/team/app:1", "localhost:5000/team/app:2"], seed=7)
    engine = sj(clean_engine)
    answer = engine.untag("localhost:5000/team/app:1")
    assert answer == [{"Untagged": "localhost:5000/team/app:1"}]
    state = engine.image_state(image)
    assert state is not None and list(state.repo_tags) == ["localhost:5000/team/app:2"]
    with pytest.raises(EngineNotFound):
        engine.untag("localhost:5000/team/app:1")
    # `%3A` must reach the engine as itself (quoted as %253A), not as a colon: the engine
    # then refuses the reference as malformed, and the real tag stays.
    with pytest.raises(EngineError) as refused:
        engine.untag("localhost%3A5000/team/app:2")
    assert refused.value.status == 400
    assert list(engine.image_state(image).repo_tags) == ["localhost:5000/team/app:2"]


def test_force_false_is_read_as_false_by_the_engine(clean_engine):
    image = busybox_image(clean_engine, "review/used:1")
    run_container(clean_engine, image, state="exited")
    engine = sj(clean_engine)
    with pytest.raises(EngineConflict):
        engine.untag("review/used:1")  # the last tag of an image a container uses: refused unless forced
    with pytest.raises(EngineConflict):
        engine.delete_image(image)
    assert engine.image_state(image) is not None
    assert [c.id for c in engine.containers_of_image(image)]
