"""The daemon's settings (contradictions rejected at start, naming both keys) and what events teach."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from sparkjoy import config
from sparkjoy.daemon.events import (CLASSIC_COMMIT_LIMIT_SECONDS, CLASSIC_STEP_GAP_SECONDS, EventInterpreter, observe,
                                    since_parameter)
from sparkjoy.daemon.settings import DaemonSettings, Watermark
from sparkjoy.errors import ConfigError
from sparkjoy.model import Image
from sparkjoy.policy import Policy


def daemon_settings(**flags) -> DaemonSettings:
    loaded = config.load({f"daemon.{k}": v for k, v in flags.items()}, None, environ={"HOME": "/nonexistent"})
    return DaemonSettings.from_settings(loaded)


def test_the_defaults_prune_hourly_without_watermarks() -> None:
    settings = daemon_settings()

    assert settings.interval == timedelta(hours=1) and settings.num_builds == 0
    assert settings.high_watermark is None and settings.listen == "127.0.0.1:9867"


@pytest.mark.parametrize("flags, names", [
    ({"interval": "30m", "num_builds": 5}, ("daemon.interval", "daemon.num_builds")),
    ({"high_watermark": "80%", "low_watermark": "90%"}, ("daemon.low_watermark", "daemon.high_watermark")),
    ({"high_watermark": "10GB", "low_watermark": "20GB"}, ("daemon.low_watermark", "daemon.high_watermark")),
    ({"high_watermark": "80%", "low_watermark": "10GB"}, ("daemon.high_watermark", "daemon.low_watermark")),
    ({"low_watermark": "10GB"}, ("daemon.low_watermark", "daemon.high_watermark")),
], ids=["an interval and a build count together", "a low percentage above the high one",
        "a low size above the high one", "a percentage mixed with a size", "a low mark without a high one"])
def test_contradicting_settings_are_rejected_with_both_keys_named(flags, names) -> None:
    with pytest.raises(ConfigError) as raised:
        daemon_settings(**flags)

    for name in names:
        assert name in str(raised.value)


def test_every_contradiction_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        daemon_settings(interval="30m", num_builds=5, high_watermark="80%", low_watermark="90%")

    assert len(raised.value.problems) == 2


def test_a_high_watermark_alone_gets_a_low_one_below_it() -> None:
    assert daemon_settings(high_watermark="85%").low_watermark == Watermark(percent=80)
    assert daemon_settings(high_watermark="20GB").low_watermark == Watermark(bytes=18_000_000_000)


@pytest.mark.parametrize("value", ["0%", "100%", "abc%", "-5GB", "0"])
def test_a_nonsense_watermark_is_refused_with_its_source(value) -> None:
    with pytest.raises(ConfigError) as raised:
        daemon_settings(high_watermark=value)

    assert "daemon.high_watermark" in str(raised.value)


def test_the_settings_come_from_the_config_file_section_too(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[daemon]\nnum_builds = 4\nhigh_watermark = "90%"\nlow_watermark = "70%"\n')

    settings = DaemonSettings.from_settings(config.load({}, str(path), environ={}))

    assert settings.num_builds == 4 and settings.low_watermark == Watermark(percent=70)


# -- events ----------------------------------------------------------------------------

T = 1_796_326_401_000_000_000


class FakeResolver:
    def __init__(self):
        self.containers = {"c1": "sha256:app"}
        self.refs = {"app:1": "sha256:app", "other:1": "sha256:other"}
        self.labels = {"sha256:app": {"team": "a"}, "sha256:other": {}}

    def image_of_container(self, container_id):
        return self.containers.get(container_id)

    def image_id(self, ref):
        return self.refs.get(ref)

    def image(self, image_id):
        return Image(id=image_id, repo_tags=("x:1",), created=None, last_tag_time=None, size=0, shared_size=0,
                     labels=self.labels.get(image_id, {}))


def event(kind, action, object_id, nanos, **attributes):
    return {"Type": kind, "Action": action, "id": object_id, "from": attributes.get("image"),
            "timeNano": nanos, "Actor": {"ID": object_id, "Attributes": attributes}}


def test_container_starts_loads_and_tags_become_last_use_of_the_image() -> None:
    interpreter = EventInterpreter(FakeResolver(), Policy())
    observations = [observe(e) for e in [
        event("container", "start", "c1", T, image="app:1"),
        event("container", "die", "c1", T + 5_000_000_000, image="app:1"),
        event("image", "load", "sha256:loaded", T + 1, name="sha256:loaded"),
        event("image", "pull", "other:1", T + 2, name="other:1"),
        event("network", "connect", "n1", T + 3),
    ]]

    learned = interpreter.learn([o for o in observations if o])

    assert set(learned.uses) == {"sha256:app", "sha256:loaded", "sha256:other"}
    assert learned.uses["sha256:app"].timestamp() == pytest.approx((T + 5_000_000_000) / 1e9)
    assert learned.builds == 0
    assert learned.last_nanos == T + 5_000_000_000


def test_a_tag_of_an_image_in_scope_counts_one_build_however_many_tags_it_gets() -> None:
    interpreter = EventInterpreter(FakeResolver(), Policy(labels=(config.LabelSelector("team", "a"),)))

    learned = interpreter.learn([observe(e) for e in [
        event("image", "tag", "sha256:app", T, name="app:1"),
        event("image", "tag", "sha256:app", T + 1_000_000, name="app:latest"),
        event("image", "tag", "sha256:other", T + 2_000_000, name="other:1"),  # out of scope
    ]])

    assert learned.builds == 1 and learned.build_finished


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _step(interpreter, container, nanos, *actions):
    interpreter.learn([observe(event("container", action, container, nanos + i, image="sha256:layer"))
                       for i, action in enumerate(actions)])


def test_a_classic_build_step_container_is_a_build_in_progress_until_it_goes() -> None:
    clock = FakeClock()
    interpreter = EventInterpreter(FakeResolver(), Policy(), clock)
    _step(interpreter, "step", T, "create", "attach", "start")
    assert interpreter.classic_build_containers == {"step"}
    assert interpreter.classic_build_in_progress()

    _step(interpreter, "step", T + 10, "die")
    clock.now += 60  # a big layer's commit
    assert interpreter.classic_build_in_progress(), "a step being committed is part of the build"

    _step(interpreter, "step", T + 20, "destroy")
    assert interpreter.classic_build_containers == set()
    clock.now += CLASSIC_STEP_GAP_SECONDS - 0.5
    assert interpreter.classic_build_in_progress(), "between two steps the build is not done"
    clock.now += 1
    assert not interpreter.classic_build_in_progress()


def test_between_two_classic_steps_the_next_step_or_the_tag_takes_over_from_the_gap() -> None:
    clock = FakeClock()
    interpreter = EventInterpreter(FakeResolver(), Policy(), clock)
    _step(interpreter, "copy", T, "create")
    assert interpreter.classic_build_in_progress(), "a step container created, not yet attached"
    _step(interpreter, "copy", T + 5, "destroy")  # a step that never ran a command
    assert interpreter.classic_build_in_progress()
    _step(interpreter, "run", T + 10, "create", "attach", "start", "die", "destroy")
    assert interpreter.classic_build_in_progress()

    interpreter.learn([observe(event("image", "tag", "sha256:app", T + 20, name="app:1"))])
    assert not interpreter.classic_build_in_progress(), "the build's tag ends it"


def test_a_failed_classic_step_whose_container_is_kept_holds_back_for_a_bounded_time() -> None:
    clock = FakeClock()
    interpreter = EventInterpreter(FakeResolver(), Policy(), clock)
    _step(interpreter, "failed", T, "create", "attach", "start", "die")  # never destroyed
    clock.now += CLASSIC_COMMIT_LIMIT_SECONDS - 1
    assert interpreter.classic_build_in_progress()
    clock.now += 2
    assert not interpreter.classic_build_in_progress()


def test_a_container_created_from_an_image_id_and_never_attached_holds_back_briefly_at_most() -> None:
    clock = FakeClock()
    interpreter = EventInterpreter(FakeResolver(), Policy(), clock)
    _step(interpreter, "created", T, "create")  # `docker create sha256:...`
    clock.now += CLASSIC_STEP_GAP_SECONDS + 0.1
    assert not interpreter.classic_build_in_progress()


def test_a_container_run_by_image_id_without_attaching_is_no_build() -> None:
    interpreter = EventInterpreter(FakeResolver(), Policy(), FakeClock())
    _step(interpreter, "detached", T, "create", "start")
    assert not interpreter.classic_build_in_progress()
    _step(interpreter, "detached", T + 10, "die", "destroy")
    assert not interpreter.classic_build_in_progress()


def test_a_reconnect_forgets_classic_steps_in_progress() -> None:
    interpreter = EventInterpreter(FakeResolver(), Policy(), FakeClock())
    _step(interpreter, "a", T, "create", "attach", "die")
    _step(interpreter, "b", T + 10, "create", "destroy")
    interpreter.forget_builds_in_progress()
    assert not interpreter.classic_build_in_progress()


def test_events_resume_just_after_the_last_one_read() -> None:
    assert since_parameter(1_796_326_401_000_000_123) == "1796326401.000000123"
    assert since_parameter(None) is None


def test_an_event_without_a_time_teaches_nothing() -> None:
    assert observe({"Type": "container", "Action": "start", "id": "c1"}) is None
    assert observe("garbage") is None


def test_sparkjoy_run_refuses_contradicting_flags_with_exit_2_before_touching_any_engine(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sparkjoy.cli import main

    result = CliRunner().invoke(
        main, ["run", "--host", "unix:///nonexistent.sock", "--interval", "30m", "--num-builds", "5",
               "--state-db", str(tmp_path / "s.db")],
        env={"HOME": str(tmp_path)},
    )

    assert result.exit_code == 2
    # Each named with where it came from, and the way out.
    assert ("daemon.interval (30m, flag --interval) and daemon.num_builds (5, flag --num-builds) contradict each "
            "other") in result.output
    assert "or set num_builds to 0" in result.output
    assert not (tmp_path / "s.db").exists()
