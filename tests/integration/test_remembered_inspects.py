"""The daemon's snapshots ask only about what the engine said changed (issue 5: "no call
repeated for an unchanged object on the daemon's later runs").

`DockerEngine(remember_inspects=True)` keeps snapshot inspects until `forget(id)`; the
daemon forgets what each engine event names (`changed_object`). Counted through a proxy
in front of the real test engine.
"""

from __future__ import annotations

from datetime import timedelta

from sparkjoy.engine.convert import changed_object
from sparkjoy.engine.connect import resolve
from sparkjoy.engine.docker_engine import DockerEngine

from tests.faultproxy import FaultProxy
from tests.fixtures import import_image
from tests.integration.support import image_events, tag, utcnow

MB = 1_000_000


def _images(snapshot):
    return {image.id: image for image in snapshot.images}


def test_a_remembering_engine_asks_again_only_about_what_changed(clean_engine):
    engine = clean_engine
    a = import_image(engine, MB, "memo/a:1")
    b = import_image(engine, MB, "memo/b:1")
    with FaultProxy(engine.socket_path) as proxy:
        remembering = DockerEngine(resolve(proxy.host), remember_inspects=True)
        first = remembering.snapshot()

        before = proxy.requests_seen
        second = remembering.snapshot()
        assert proxy.requests_seen - before == 1, "an unchanged engine costs one GET /system/df"
        assert _images(second) == _images(first)

        since = utcnow() - timedelta(seconds=1)
        tag(engine, a, "memo/a:1")  # tagged again: a newer last-tag time
        events = image_events(engine, since, utcnow() + timedelta(seconds=1))
        retag = [e for e in events if e.get("Action") == "tag" and "memo/a:1" in str(e.get("Actor"))]
        assert retag, events
        changed = {changed_object(e) for e in retag}
        assert changed == {a}, retag

        # Not told yet: the remembered answer (this is what forgetting is for).
        assert _images(remembering.snapshot())[a].last_tag_time == _images(first)[a].last_tag_time
        for object_id in changed:
            remembering.forget(object_id)
        before = proxy.requests_seen
        third = _images(remembering.snapshot())
        assert proxy.requests_seen - before == 2, "GET /system/df and one inspect, of the image that changed"
        assert third[a].last_tag_time > _images(first)[a].last_tag_time
        assert third[b] == _images(first)[b]


def test_an_engine_told_nothing_to_remember_always_asks(clean_engine):
    """The library's default. (The one-shot commands remember across runs, checked against the
    engine's events: test_remembered_across_runs.)"""
    engine = clean_engine
    a = import_image(engine, MB, "memo/a:1")
    with FaultProxy(engine.socket_path) as proxy:
        plain = DockerEngine(resolve(proxy.host))
        first = plain.snapshot()
        tag(engine, a, "memo/a:1")
        before = proxy.requests_seen
        second = plain.snapshot()
        assert proxy.requests_seen - before >= 2  # df and the inspect again
        assert _images(second)[a].last_tag_time > _images(first)[a].last_tag_time


def test_events_that_name_an_image_by_reference_or_cannot_be_read_forget_everything():
    assert changed_object({"Type": "image", "Action": "pull", "id": "busybox:latest"}) is None
    assert changed_object({"Type": "image", "Action": "tag", "Actor": {"ID": "sha256:ab"}}) == "sha256:ab"
    assert changed_object({"Type": "container", "Action": "die", "id": "c0ffee"}) == "c0ffee"
    assert changed_object({"Type": "network", "Action": "connect", "id": "n1"}) is False
    assert changed_object("garbage") is None
    assert changed_object({"Type": "image", "Action": "delete"}) is None
