"""`sparkjoy config` and the flag errors of every command, through click's CliRunner, without an engine.

Each run sees no SPARKJOY_* or DOCKER_* variable of the machine's, an empty config file of its
own and a home directory in tmp_path, so nothing on the machine takes part.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner, Result

from sparkjoy import cli

Invoke = Callable[..., Result]


@pytest.fixture
def sparkjoy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    for name in list(os.environ):
        if name.startswith(("SPARKJOY_", "DOCKER_")):
            monkeypatch.delenv(name)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.setenv("SPARKJOY_CONFIG", str(empty))

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(cli.main, list(args), env=env, catch_exceptions=False)

    return invoke


def line_of(output: str, key: str) -> str:
    (line,) = [line for line in output.splitlines() if line.startswith(f"{key} = ")]
    return line


# -- labels are shown as the user writes them ------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "shown"),
    [
        ([], {"SPARKJOY_LABELS": "project=shop"}, 'labels = ["project=shop"]'),
        ([], {"SPARKJOY_LABELS": "a=b,c"}, 'labels = ["a=b", "c"]'),
        (["--label", "project", "--label", "a=b"], None, 'labels = ["project", "a=b"]'),
        (["--label", "a=b=c", "--label", "empty="], None, 'labels = ["a=b=c", "empty="]'),
    ],
)
def test_config_shows_label_selectors_as_written(sparkjoy: Invoke, args, env, shown: str) -> None:
    done = sparkjoy("config", *args, env=env)
    assert done.exit_code == 0, done.output
    assert line_of(done.stdout, "labels") == shown


# -- config checks what `run` checks -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[daemon]\ninterval = "1h"\nnum_builds = 5\n', ["daemon.interval", "daemon.num_builds"]),
        ('[daemon]\nhigh_watermark = "80%"\nlow_watermark = "90%"\n', ["daemon.low_watermark", "daemon.high_watermark"]),
        ('[daemon]\nhigh_watermark = "80%"\nlow_watermark = "10GB"\n', ["daemon.low_watermark", "daemon.high_watermark"]),
        ('[daemon]\nlow_watermark = "10GB"\n', ["daemon.low_watermark", "daemon.high_watermark"]),
    ],
)
def test_config_rejects_daemon_settings_that_contradict_each_other_as_run_does(
        sparkjoy: Invoke, tmp_path: Path, text: str, named: list[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    for command in (["config"], ["run"]):
        done = sparkjoy(*command, "--config", str(path))
        assert done.exit_code == 2, (command, done.output)
        assert done.stdout == "", command
        for key in named:
            assert key in done.stderr, (command, done.stderr)


def test_config_rejects_contradicting_daemon_settings_from_the_environment(sparkjoy: Invoke) -> None:
    done = sparkjoy("config", env={"SPARKJOY_DAEMON_INTERVAL": "2h", "SPARKJOY_DAEMON_NUM_BUILDS": "3"})
    assert done.exit_code == 2 and "daemon.interval" in done.stderr and "daemon.num_builds" in done.stderr


def test_config_accepts_consistent_daemon_settings(sparkjoy: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[daemon]\nnum_builds = 5\nhigh_watermark = "90%"\nlow_watermark = "80%"\n')
    done = sparkjoy("config", "--config", str(path))
    assert done.exit_code == 0, done.output
