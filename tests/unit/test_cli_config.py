"""`sparkjoy config` and the flag errors of every command, through click's CliRunner, without an engine.

Each run sees no SPARKJOY_* or DOCKER_* variable of the machine's, an empty config file of its
own and a home directory in tmp_path, so nothing on the machine takes part.
"""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path
from typing import Callable, Iterator

import pytest
from click.testing import CliRunner, Result

from sparkjoy import cli

Invoke = Callable[..., Result]


@pytest.fixture
def sparkjoy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Invoke]:
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

    # `run` sets up sparkjoy's logging (a handler on the runner's stderr) before it resolves the engine.
    logger = logging.getLogger("sparkjoy")
    handlers, level = list(logger.handlers), logger.level
    yield invoke
    logger.handlers[:] = handlers
    logger.setLevel(level)


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


def test_contradictions_come_with_every_other_problem_at_once(sparkjoy: Invoke, tmp_path: Path) -> None:
    # Once a wrong value hid them: fixed, the next run brought the contradictions.
    path = tmp_path / "c.toml"
    path.write_text('max_age = "bogus"\n[daemon]\ninterval = "1h"\nnum_builds = 3\n'
                    'high_watermark = "80%"\nlow_watermark = "2GB"\n')
    for command in (["config"], ["run"]):
        done = sparkjoy(*command, "--config", str(path), env={"SPARKJOY_TYPO": "1"})
        assert done.exit_code == 2, (command, done.output)
        for words in ("max_age = 'bogus'", "SPARKJOY_TYPO",
                      f"daemon.interval (1h, {path}) and daemon.num_builds (3, {path})",
                      f"daemon.high_watermark (80%, {path}) and daemon.low_watermark (2GB, {path}) mix"):
            assert words in done.stderr, (command, words, done.stderr)


def test_a_wrong_value_is_not_also_reported_as_a_contradiction(sparkjoy: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[daemon]\nhigh_watermark = "lots"\nlow_watermark = "2GB"\n')
    done = sparkjoy("config", "--config", str(path))
    assert done.exit_code == 2
    assert "high_watermark = 'lots'" in done.stderr
    assert "is set but" not in done.stderr, done.stderr  # the high mark is set, only wrong


def test_config_accepts_consistent_daemon_settings(sparkjoy: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[daemon]\nnum_builds = 5\nhigh_watermark = "90%"\nlow_watermark = "80%"\n')
    done = sparkjoy("config", "--config", str(path))
    assert done.exit_code == 0, done.output


# -- the output is a config file sparkjoy reads back ---------------------------------------------------


def test_config_output_is_toml_that_config_reads_back_to_the_same_settings(sparkjoy: Invoke, tmp_path: Path) -> None:
    source = tmp_path / "source.toml"
    source.write_text('[engine]\ntimeout = "90s"\n[daemon]\nhigh_watermark = "85%"\nnum_builds = 4\n')
    first = sparkjoy("config", "--config", str(source), "--label", "project=shop", "--label", "tier",
                     "--max-age", "1d12h", "--volumes", "--host", "unix:///run/docker.sock",
                     env={"SPARKJOY_REPOS": "shop/*,api", "SPARKJOY_DAEMON_QUIET_PERIOD": "45s"})
    assert first.exit_code == 0, first.output
    document = tomllib.loads(first.stdout)
    assert document["max_age"] == "1d12h" and document["labels"] == ["project=shop", "tier"]
    assert document["engine"] == {"host": "unix:///run/docker.sock", "timeout": "1m30s"}
    assert document["daemon"]["high_watermark"] == "85%" and document["daemon"]["quiet_period"] == "45s"
    assert "interval" not in document["daemon"]  # not set: a comment, not a value
    assert "# daemon.interval: not set" in first.stdout

    written = tmp_path / "written.toml"
    written.write_text(first.stdout)
    second = sparkjoy("config", "--config", str(written))
    assert second.exit_code == 0, second.output
    assert second.stdout.splitlines()[0] == f"# config file: {written}"
    assert second.stdout.splitlines()[1:] == first.stdout.splitlines()[1:]


def test_config_output_of_the_defaults_reads_back(sparkjoy: Invoke, tmp_path: Path) -> None:
    first = sparkjoy("config")
    assert "null" not in first.stdout and 'engine.timeout = "10m"' in first.stdout, first.stdout
    written = tmp_path / "written.toml"
    written.write_text(first.stdout)
    second = sparkjoy("config", "--config", str(written))
    assert second.exit_code == 0, second.output
    assert second.stdout.splitlines()[1:] == first.stdout.splitlines()[1:]


# -- a flag error names the flag as the user types it ------------------------------------------------


@pytest.mark.parametrize(
    ("command", "args", "flag", "not_named"),
    [
        (["config"], ["--label", "=x"], "flag --label:", "--labels"),
        (["config"], ["--repo", ""], "flag --repo:", "--repos"),
        (["config"], ["--exclude", " "], "flag --exclude:", None),
        (["prune", "--dry-run"], ["--exclude", "redis"], "flag --exclude:", None),
        (["prune", "--dry-run"], ["--label", "=x"], "flag --label:", "--labels"),
        (["df"], ["--repo", ""], "flag --repo:", "--repos"),
        (["run"], ["--label", "=x"], "flag --label:", "--labels"),
        (["run"], ["--num-builds", "-1"], "flag --num-builds:", None),
        (["run"], ["--high-watermark", "200%"], "flag --high-watermark:", None),
    ],
)
def test_a_flag_error_names_the_flag_as_typed(sparkjoy: Invoke, command, args, flag: str, not_named) -> None:
    done = sparkjoy(*command, *args)
    assert done.exit_code == 2, done.output
    assert flag in done.stderr, done.stderr
    if not_named:
        assert not_named not in done.stderr, done.stderr


# -- a malformed engine address is a usage error, an address nobody answers at is unreachable ---------


@pytest.mark.parametrize(("command", "args", "env", "source"), [
    (["df"], ["--host", "bogus://x"], None, "flag --host"),
    (["prune", "--dry-run"], ["-H", "tcp://nohost"], None, "flag --host"),
    (["df"], [], {"DOCKER_HOST": "garbage"}, "DOCKER_HOST"),
    (["prune", "-f"], [], {"DOCKER_HOST": "bogus://x"}, "DOCKER_HOST"),
    (["run"], [], {"DOCKER_HOST": "garbage"}, "DOCKER_HOST"),
    (["config"], ["--host", "bogus://x"], None, "flag --host"),
    (["config"], [], {"SPARKJOY_ENGINE_HOST": "bogus://x"}, "SPARKJOY_ENGINE_HOST"),
])
def test_a_malformed_engine_address_is_exit_2_naming_its_source(sparkjoy: Invoke, monkeypatch: pytest.MonkeyPatch,
                                                                 command, args, env, source: str) -> None:
    from sparkjoy.daemon import supervisor

    # Should `run` ever accept the address, it must not serve forever: it exits 99 at once.
    monkeypatch.setattr(supervisor.Supervisor, "run", lambda self: 99)
    done = sparkjoy(*command, *args, env={"SPARKJOY_DAEMON_LISTEN": "off", **(env or {})})
    assert done.exit_code == 2, done.output
    assert source in done.stderr and "not an engine address" in done.stderr, done.stderr
    assert "start the engine" not in done.stderr and "cannot reach" not in done.stderr, done.stderr


def test_a_well_formed_address_nobody_answers_at_is_still_exit_3(sparkjoy: Invoke, tmp_path: Path) -> None:
    for args, env in ((["--host", f"unix://{tmp_path}/nothing.sock"], None),
                      ([], {"DOCKER_HOST": f"unix://{tmp_path}/nothing.sock"})):
        done = sparkjoy("df", *args, env=env)
        assert done.exit_code == 3, done.output
        assert "cannot reach the Docker engine" in done.stderr and "Fix: start the engine" in done.stderr
