"""Deletion answers on the real (private) dockerd: the engine's own untag/delete answers pass
the executor's checks of what an answer names (no extra image_state on the normal path); a
deletion that did happen but was answered with a list naming nothing still reads as
DELETED; an unreadable answer after tags went names the tags that went; an unlisted
ancestor answered with no object stops the snapshot instead of unlinking a child that
stays; layers told on BuildKit-built images equal their own histories."""

from __future__ import annotations

from contextlib import closing

import pytest
from datetime import timedelta

from sparkjoy.engine import convert
from sparkjoy.engine.docker_engine import DockerEngine
from sparkjoy.errors import EngineError
from sparkjoy.executor import Executor, Outcome, _deleted, _untagged
from sparkjoy.planner import plan as make_plan
from sparkjoy.policy import Policy

from tests.faultproxy import Rule, rewrite, rewrite_json
from tests.fixtures import BUSYBOX_BASE, build, import_image, load_image, make_layer
from tests.integration.support import counting_proxy, tag, utcnow


class Recording(DockerEngine):
    """Records every untag/delete answer and every image_state call, in order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log: list[tuple] = []

    def untag(self, tag):
        answer = super().untag(tag)
        self.log.append(("untag", tag, answer))
        return answer

    def delete_image(self, image_id):
        answer = super().delete_image(image_id)
        self.log.append(("delete", image_id, answer))
        return answer

    def image_state(self, image_id):
        self.log.append(("state", image_id))
        return super().image_state(image_id)


def _everything(engine):
    return make_plan(engine.snapshot(), Policy(max_age=timedelta(seconds=-1), keep_recent=0),
                     now=utcnow() + timedelta(days=1))


def test_real_answers_name_what_they_untag_and_delete_no_extra_image_state(clean_engine):
    base = [make_layer(5000, seed=901)]
    dangling = import_image(clean_engine, 1000, "review2/moved:1", seed=902)
    import_image(clean_engine, 1000, "review2/moved:1", seed=9020)  # the tag moves on: dangling, tag time kept
    last = import_image(clean_engine, 1000, "review2/last:1", seed=903)
    several = import_image(clean_engine, 1000, ["review2/sev:1", "review2/sev:2", "other/sev:3"], seed=904)
    library = import_image(clean_engine, 1000, None, seed=905)
    tag(clean_engine, library, "docker.io/library/review2lib:1")
    tag(clean_engine, library, "index.docker.io/review2user/app:latest")
    registry = import_image(clean_engine, 1000, ["localhost:5000/team/x:1", "localhost:5000/team/x:2"], seed=906)
    parent = load_image(clean_engine, base, "review2/base:1")
    child = import_image(clean_engine, 1000, "review2/child:1", base=base, seed=907)
    engine = Recording(DockerEngine.connect(host=clean_engine.host).connection)
    the_plan = _everything(engine)
    result = Executor(engine, workers=1).execute(the_plan)
    outcomes = {r.planned.id: r.outcome for r in result.results}
    ids = [dangling, last, several, library, registry, parent, child]
    assert all(outcomes[i] is Outcome.DELETED for i in ids), result.results
    for index, entry in enumerate(engine.log):
        if entry[0] == "untag":
            _, name, answer = entry
            assert answer, entry
            # the image the tag belongs to: the last image_state before this untag
            image_id = next(e[1] for e in reversed(engine.log[:index]) if e[0] == "state")
            assert _untagged(answer, name) or _deleted(answer, image_id), entry
        if entry[0] == "delete":
            assert _deleted(entry[2], entry[1]), entry
    # no image_state right after an untag or delete answer (the new checks' look) on the normal path
    for before, after in zip(engine.log, engine.log[1:]):
        if before[0] == "delete":
            assert after[0] != "state" or after[1] != before[1], (before, after)


def test_a_deletion_that_happened_but_was_answered_with_an_empty_list_is_deleted(proxy, clean_engine):
    # The engine really untags/deletes; the proxy strips its answer to []: every new check
    # fires, looks at the engine, and must find the image gone (DELETED, not FAILED/PARTIAL).
    dangling = import_image(clean_engine, 1000, "review2/moved:1", seed=911)
    import_image(clean_engine, 1000, "review2/moved:1", seed=9110)
    one = import_image(clean_engine, 1000, "review2/one:1", seed=912)
    two = import_image(clean_engine, 1000, ["review2/two:1", "review2/two:2"], seed=913)
    proxy.add(Rule("DELETE", r"^/images/", rewrite_json(lambda body: [])))
    engine = DockerEngine.connect(host=proxy.host)
    result = Executor(engine, workers=1).execute(_everything(engine))
    by_id = {r.planned.id: r for r in result.results}
    assert {i: by_id[i].outcome for i in (dangling, one, two)} == {
        dangling: Outcome.DELETED, one: Outcome.DELETED, two: Outcome.DELETED}, result.results
    assert set(by_id[two].removed_tags) == {"review2/two:1", "review2/two:2"}
    with closing(clean_engine.client()) as client:
        assert not {i.id for i in client.images.list(all=True)} & {dangling, one, two}


def test_buildkit_images_on_a_shared_base_with_cache_records_are_told_as_their_own_histories(clean_engine):
    built = build(clean_engine, BUSYBOX_BASE + "RUN echo a > /a\n", "review2/bk-base:1", buildkit=True)
    on = [build(clean_engine, f"FROM review2/bk-base:1\nRUN echo {i} > /f{i}\n", f"review2/bk-on:{i}",
                buildkit=True) for i in range(3)]
    top = build(clean_engine, "FROM review2/bk-on:0\nRUN echo t > /t\n", "review2/bk-top:1", buildkit=True)
    with counting_proxy(clean_engine, "GET", r"^/images/.+/history$", "history") as (_, history, through):
        snapshot = DockerEngine.connect(host=through.host).snapshot()
        asked = history.matched
    assert snapshot.build_cache, "BuildKit left cache records"
    layers = {image.id: image.layers for image in snapshot.images}
    with closing(clean_engine.client()) as client:
        for image_id in [built, *on, top]:
            inspect = client.api.inspect_image(image_id)
            own = convert.layers_from(inspect, client.api.history(image_id), inspect["Size"])
            assert own and layers[image_id] == own, image_id
    assert asked < len(layers)


def test_tags_removed_before_an_unreadable_untag_answer_are_reported(proxy, clean_engine):
    # Three tags; the engine really removes the 2nd, but its answer reaches sparkjoy as an
    # empty 200 body (since d1bc815 a bad answer, EngineError). Two tags are gone from the
    # engine: the result must say so (PARTIAL, removed_tags), not FAILED with none removed.
    image = import_image(clean_engine, 1000, ["review2/three:1", "review2/three:2", "review2/three:3"], seed=921)
    proxy.add(Rule("DELETE", r"^/images/", rewrite(lambda body, exchange: b"", "emptied"), nth=2))
    engine = DockerEngine.connect(host=proxy.host)
    result = Executor(engine, workers=1).execute(_everything(engine))
    [mine] = [r for r in result.results if r.planned.id == image]
    with closing(clean_engine.client()) as client:
        left = set(client.api.inspect_image(image)["RepoTags"])
    assert left == {"review2/three:3"}
    assert set(mine.removed_tags) == {"review2/three:1", "review2/three:2"}, mine


def test_a_last_untag_answered_unreadably_after_deleting_reports_the_removed_tags(proxy, clean_engine):
    image = import_image(clean_engine, 1000, ["review2/pair:1", "review2/pair:2"], seed=922)
    proxy.add(Rule("DELETE", r"^/images/", rewrite(lambda body, exchange: b"", "emptied"), nth=2))
    engine = DockerEngine.connect(host=proxy.host)
    result = Executor(engine, workers=1).execute(_everything(engine))
    [mine] = [r for r in result.results if r.planned.id == image]
    with closing(clean_engine.client()) as client:
        assert image not in {i.id for i in client.images.list(all=True)}
    assert mine.outcome is Outcome.DELETED and set(mine.removed_tags) == {"review2/pair:1", "review2/pair:2"}, mine


@pytest.mark.parametrize("answer", [None, [], "x"])
def test_an_unlisted_ancestor_answered_with_no_object_does_not_unlink_a_child_that_stays(proxy, clean_engine, answer):
    # DockerEngine._with_listed_parents reads the classic builder's intermediate images. An
    # inspect answer that is JSON but no object (null, [], a string), read as "no ancestor",
    # would cut the child from its base: the base would be planned for deletion and lose its
    # tag before the engine refused to delete it (safety rule 1).
    base = build(clean_engine, BUSYBOX_BASE, "review2/base:1", buildkit=False)
    child = build(clean_engine, "FROM review2/base:1\nRUN echo one > /one\nRUN echo two > /two\n",
                  "review2/child:1", buildkit=False)
    with closing(clean_engine.client()) as client:
        hidden = client.api.inspect_image(child)["Parent"]
    assert hidden and hidden != base
    proxy.add(Rule("GET", "^/images/" + hidden + "/json$", rewrite_json(lambda body: answer)))
    # Only a 404 means "no ancestor": anything else that is no object stops the snapshot.
    with pytest.raises(EngineError, match="expected an object"):
        DockerEngine.connect(host=proxy.host).snapshot()
