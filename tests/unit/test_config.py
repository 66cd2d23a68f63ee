"""Settings from flags, environment, file and defaults; every bad input is a ConfigError naming it."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparkjoy import config
from sparkjoy.daemon import settings as daemon_settings  # noqa: F401  registers the [daemon] keys, fuzzed too
from sparkjoy.errors import ConfigError, ExitCode
from sparkjoy.policy import LabelSelector, VolumeMode

# How many random config files and environments the fuzz tries; docs/reliability.md quotes it.
FUZZ_EXAMPLES = {"config_file": 1000, "environment": 500}


def load(tmp_path: Path, text: str | bytes | None = None, flags=None, env=None) -> config.Settings:
    """Given a config file's content (None: no file), flags and variables, return load()'s answer.

    XDG_CONFIG_HOME points into tmp_path so no file of the machine's can take part.
    """
    environ = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)}
    environ.update(env or {})
    path = None
    if text is not None:
        path = tmp_path / "config.toml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
    return config.load(flags or {}, str(path) if path else None, environ)


def problems_of(tmp_path: Path, text=None, flags=None, env=None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, flags, env)
    assert caught.value.exit_code is ExitCode.USAGE
    return caught.value.problems


def test_without_file_variables_or_flags_the_defaults_apply(tmp_path: Path) -> None:
    loaded = load(tmp_path)
    assert loaded.policy.max_age == timedelta(hours=6)
    assert loaded.policy.keep_recent == 2
    assert loaded.policy.volumes is VolumeMode.NONE
    assert loaded.host is None and loaded.timeout == 600
    assert loaded.config_file is None


@pytest.mark.parametrize(
    ("in_file", "in_env", "in_flag", "expected"),
    [
        (None, None, None, timedelta(hours=6)),
        ("1h", None, None, timedelta(hours=1)),
        ("1h", "2h", None, timedelta(hours=2)),
        ("1h", "2h", "3h", timedelta(hours=3)),
        (None, "2h", "3h", timedelta(hours=3)),
        ("1h", None, "3h", timedelta(hours=3)),
        ("1h", "", None, timedelta(hours=1)),  # an empty variable is no setting
    ],
)
def test_flags_win_over_variables_which_win_over_the_file_which_wins_over_defaults(
    tmp_path: Path, in_file, in_env, in_flag, expected: timedelta
) -> None:
    loaded = load(
        tmp_path,
        f'max_age = "{in_file}"\n' if in_file else None,
        flags={"max_age": in_flag} if in_flag else None,
        env={"SPARKJOY_MAX_AGE": in_env} if in_env is not None else None,
    )
    assert loaded.policy.max_age == expected


def test_a_complete_file_sets_every_key(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        """
max_age = "-1s"
keep_recent = 0
labels = ["project=p1", "team"]
repos = ["p1/*"]
exclude = ["redis:*", "*:keep"]
containers = false
images = true
build_cache = false
volumes = "anonymous"

[engine]
host = "tcp://10.0.0.1:2376"
timeout = "10m"
""",
    )
    policy = loaded.policy
    assert policy.everything_old and policy.keep_recent == 0
    assert policy.labels == (LabelSelector("project", "p1"), LabelSelector("team"))
    assert policy.repos == ("p1/*",) and policy.exclude == ("redis:*", "*:keep")
    assert (policy.containers, policy.images, policy.build_cache) == (False, True, False)
    assert policy.volumes is VolumeMode.ANONYMOUS
    assert loaded.host == "tcp://10.0.0.1:2376" and loaded.timeout == 600
    assert loaded.config_file == tmp_path / "config.toml"


def test_variables_carry_lists_comma_separated_and_booleans_as_words(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        env={
            "SPARKJOY_EXCLUDE": "redis:*, ,*:keep",
            "SPARKJOY_CONTAINERS": "off",
            "SPARKJOY_KEEP_RECENT": " 3 ",
            "SPARKJOY_ENGINE_TIMEOUT": "90s",
        },
    )
    assert loaded.policy.exclude == ("redis:*", "*:keep")
    assert loaded.policy.containers is False
    assert loaded.policy.keep_recent == 3
    assert loaded.timeout == 90


def test_the_default_file_location_is_used_when_no_file_is_named(tmp_path: Path) -> None:
    default = tmp_path / "xdg" / "sparkjoy" / "config.toml"
    default.parent.mkdir(parents=True)
    default.write_text("keep_recent = 7\n")
    loaded = load(tmp_path)
    assert loaded.policy.keep_recent == 7 and loaded.config_file == default


def test_an_empty_file_means_the_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "").policy.keep_recent == 2


def test_an_unknown_key_is_an_error_that_suggests_the_closest_key(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, 'max_agee = "1h"\n')
    assert "unknown key max_agee" in problem and "did you mean max_age?" in problem
    assert str(tmp_path / "config.toml") in problem


def test_an_unknown_key_in_a_section_suggests_the_dotted_key(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, '[engine]\nhots = "unix:///x.sock"\n')
    assert "unknown key [engine] hots" in problem and "engine.host" in problem


@pytest.mark.parametrize(("variable", "meant"), [
    ("SPARKJOY_KEEP_RECNET", "SPARKJOY_KEEP_RECENT"),  # a typo that would leave keep_recent at 2
    ("SPARKJOY_MAXAGE", "SPARKJOY_MAX_AGE"),
    ("SPARKJOY_HOST", "SPARKJOY_ENGINE_HOST"),  # a key's name without its section
    ("SPARKJOY_INTERVAL", "SPARKJOY_DAEMON_INTERVAL"),
    ("SPARKJOY_DAEMON_INTERVALL", "SPARKJOY_DAEMON_INTERVAL"),
    ("SPARKJOY_CONFG", "SPARKJOY_CONFIG"),
    ("SPARKJOY_DAEMON_PORT", "SPARKJOY_DAEMON_LISTEN"),  # a name users guess
    ("SPARKJOY_KEEP", "SPARKJOY_KEEP_RECENT"),  # the start of one name
    ("sparkjoy_keep_recent", "SPARKJOY_KEEP_RECENT? variable names are case-sensitive)"),
    ("SPARKJOY_Max_Age", "SPARKJOY_MAX_AGE? variable names are case-sensitive)"),
])
def test_an_unknown_sparkjoy_variable_is_an_error_that_suggests_the_one_meant(tmp_path: Path, variable, meant) -> None:
    (problem,) = problems_of(tmp_path, env={variable: "10"})
    assert f"environment variable {variable}: not a sparkjoy setting (did you mean {meant}" in problem, problem


@pytest.mark.parametrize("variable", ["SPARKJOY_ZZZ", "SPARKJOY_BENCH"])  # never the bench scripts' own
def test_an_unknown_variable_like_no_setting_points_to_the_list_of_keys(tmp_path: Path, variable) -> None:
    (problem,) = problems_of(tmp_path, env={variable: "1"})
    assert variable in problem and "sparkjoy config --keys" in problem and "did you mean" not in problem


@pytest.mark.parametrize("environ", [
    {},  # only what load() gets anyway
    {"SPARKJOY_CONFIG": ""},  # a variable, not a setting (empty: no file named)
    {"SPARKJOY_BENCH_CACHE": "/tmp/x"},  # the benchmark scripts' own
    {"SPARKJOY_TYPO": ""},  # set to nothing is not set, as for a setting's variable
    {"NOT_SPARKJOY_FOO": "1", "SPARKJOYFUL": "9"},  # not the prefix
    # Kubernetes' service links for a Service named sparkjoy, and one named sparkjoy-metrics:
    {"SPARKJOY_SERVICE_HOST": "10.0.0.1", "SPARKJOY_SERVICE_PORT": "9867", "SPARKJOY_SERVICE_PORT_HTTP": "9867",
     "SPARKJOY_PORT": "tcp://10.0.0.1:9867", "SPARKJOY_PORT_9867_TCP": "tcp://10.0.0.1:9867",
     "SPARKJOY_PORT_9867_TCP_PROTO": "tcp", "SPARKJOY_PORT_9867_TCP_PORT": "9867",
     "SPARKJOY_PORT_9867_TCP_ADDR": "10.0.0.1"},
    {"SPARKJOY_METRICS_SERVICE_HOST": "10.0.0.2", "SPARKJOY_METRICS_PORT_9867_UDP_ADDR": "10.0.0.2"},
    # docker's legacy links (`--link X:sparkjoy`, CI services): NAME=/... and the rest with it
    {"SPARKJOY_NAME": "/ci/sparkjoy", "SPARKJOY_PORT": "tcp://172.17.0.2:9867",
     "SPARKJOY_PORT_9867_TCP_ADDR": "172.17.0.2", "SPARKJOY_ENV_SPARKJOY_DAEMON_LISTEN": "0.0.0.0:9867"},
])
def test_variables_that_are_no_setting_but_not_mistakes_pass(tmp_path: Path, environ) -> None:
    assert load(tmp_path, env=environ).policy.keep_recent == 2


@pytest.mark.parametrize("variable", ["SPARKJOY_PORT", "SPARKJOY_DAEMON_PORT", "SPARKJOY_METRICS_PORT_9867_TCP_ADDR",
                                      "SPARKJOY_ENV_X"])
def test_a_link_variable_without_the_one_every_link_sets_is_a_mistake(tmp_path: Path, variable) -> None:
    # Kubernetes always sets NAME_SERVICE_HOST with the others, docker's links NAME_NAME=/...;
    # without them SPARKJOY_DAEMON_PORT is someone guessing at the daemon's port setting.
    (problem,) = problems_of(tmp_path, env={variable: "9000", "SPARKJOY_OTHER_NAME": "/not/this/one"})
    assert f"environment variable {variable}: not a sparkjoy setting" in problem


def test_a_name_variable_that_is_no_link_marks_nothing(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, env={"SPARKJOY_NAME": "my-host", "SPARKJOY_PORT": "9000"})
    assert [p.split(":")[0] for p in problems] == ["environment variable SPARKJOY_NAME",
                                                  "environment variable SPARKJOY_PORT"]


def test_every_load_knows_the_daemons_keys_whoever_imported_what() -> None:
    script = ("import os\nfrom sparkjoy import config\n"
              "values = config.load({}, None, {'HOME': '/nonexistent', 'SPARKJOY_DAEMON_INTERVAL': '2h'}).values\n"
              "assert str(values['daemon.interval']) == '2:00:00', values\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# -- one value alone (`sparkjoy build`, the library client: the daemon's address) ----------------


def test_one_value_comes_from_the_flag_then_the_variable_then_the_file_then_the_default(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('keepp = 1\nmax_age = "never"\n[daemon]\nlisten = "127.0.0.1:3"\n')  # others' mistakes
    environ = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path), "SPARKJOY_TYPO": "1"}
    assert config.load_value("daemon.listen", "127.0.0.1:1", str(path), environ) == "127.0.0.1:1"
    assert config.load_value("daemon.listen", None, str(path),
                             {**environ, "SPARKJOY_DAEMON_LISTEN": "127.0.0.1:2"}) == "127.0.0.1:2"
    assert config.load_value("daemon.listen", None, str(path), environ) == "127.0.0.1:3"
    assert config.load_value("daemon.listen", None, None, environ) == daemon_settings.DEFAULT_LISTEN


@pytest.mark.parametrize(("text", "env", "words"), [
    ('[daemon]\nlisten = "nowhere"\n', {}, "daemon.listen = 'nowhere'"),
    ("[daemon\n", {}, "not valid TOML"),
    (None, {"SPARKJOY_DAEMON_LISTEN": "x:y"}, "environment variable SPARKJOY_DAEMON_LISTEN: daemon.listen = 'x:y'"),
])
def test_one_value_that_is_wrong_is_an_error_naming_it(tmp_path: Path, text, env, words) -> None:
    path = None
    if text is not None:
        path = tmp_path / "c.toml"
        path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config.load_value("daemon.listen", None, str(path) if path else None, {"HOME": str(tmp_path), **env})
    (problem,) = caught.value.problems
    assert words in problem, problem


def test_unknown_variables_are_reported_with_every_other_problem(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "keepp = 1\n", env={"SPARKJOY_B_TYPO": "1", "SPARKJOY_A_TYPO": "1",
                                                         "SPARKJOY_IMAGES": "maybe"})
    assert len(problems) == 4, problems
    assert [p.split(":")[0] for p in problems if "not a sparkjoy setting" in p] == [
        "environment variable SPARKJOY_A_TYPO", "environment variable SPARKJOY_B_TYPO"]


def test_every_problem_is_reported_at_once_with_its_source_key_and_value(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        'keep_recent = -1\nmax_age = 5\nkeepp = 1\nvolumes = "some"\n',
        env={"SPARKJOY_IMAGES": "maybe"},
        flags={"exclude": ["ok", ""]},
    )
    assert len(problems) == 6, problems
    text = "\n".join(problems)
    for expected in (
        "keep_recent = -1",
        "max_age = 5",
        "unknown key keepp",
        "volumes = 'some'",
        "environment variable SPARKJOY_IMAGES: images = 'maybe'",
        "flag --exclude: exclude = ['ok', '']",
    ):
        assert expected in text, text


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('keep_recent = "two"', ["keep_recent", "'two'", "whole number"]),
        ("keep_recent = 2.5", ["keep_recent", "2.5"]),
        ("keep_recent = true", ["keep_recent", "True"]),
        ("keep_recent = 10000000000", ["keep_recent", "absurd"]),
        ("max_age = 6", ["max_age", "bare number", "'6s'"]),
        ('max_age = "6 hours"', ["max_age", "'6 hours'"]),
        ('max_age = "-5000000h"', ["max_age", "100 years"]),
        ('max_age = "1000000d"', ["max_age", "100 years"]),
        ("max_age = 1979-05-27", ["max_age", "1979"]),
        ("max_age = [1]", ["max_age", "[1]"]),
        ("labels = 5", ["labels", "5"]),
        ('labels = ["=p1"]', ["labels", "KEY or KEY=VALUE"]),
        ("exclude = [1]", ["exclude", "[1]"]),
        ('exclude = [""]', ["exclude", "non-empty"]),
        ('repos = "app"', None),  # one string is a list of one: valid
        ('containers = "maybe"', ["containers", "'maybe'", "true or false"]),
        ("images = 1", ["images", "1"]),
        ('volumes = "some"', ["volumes", "none, anonymous, all"]),
        ("volumes = 3", ["volumes", "3"]),
        ('[engine]\nhost = "localhost"', ["engine.host", "'localhost'"]),
        ('[engine]\ntimeout = "0s"', ["engine.timeout", "at least 1s"]),
        ('[engine]\ntimeout = "-5m"', ["engine.timeout", "'-5m'"]),
        ("[engine]\ntimeout = 30", ["engine.timeout", "bare number"]),
        ("engine = 5", ["unknown key engine"]),
        # Sizes (the daemon's watermarks): negative, zero, absurd, or not a size at all.
        ('[daemon]\nhigh_watermark = "-5GB"', ["daemon.high_watermark", "'-5GB'"]),
        ('[daemon]\nhigh_watermark = "0B"', ["daemon.high_watermark", "positive"]),
        ('[daemon]\nhigh_watermark = "' + "9" * 400 + 'PB"', ["daemon.high_watermark", "larger than the engine"]),
        ('[daemon]\nhigh_watermark = "150%"', ["daemon.high_watermark", "between 0% and 100%"]),
        ("[daemon]\nhigh_watermark = 1.5", ["daemon.high_watermark", "1.5"]),
        # A bare number: 85 meant as 85% was taken as 85 bytes, and the daemon evicted at once.
        ("[daemon]\nhigh_watermark = 85", ["daemon.high_watermark", "did you mean '85%' or '85GB' or '85B'?"]),
        ('[daemon]\nhigh_watermark = "85"', ["daemon.high_watermark", "did you mean '85%'"]),
        ('[daemon]\nlow_watermark = "0.85"', ["daemon.low_watermark", "did you mean '85%' or '0.85%' or '0.85GB'?"]),
        ("[daemon]\nhigh_watermark = 2000000000", ["daemon.high_watermark", "did you mean '2000000000GB' or '2000000000B'?"]),
    ],
)
def test_a_wrong_value_in_the_file_is_an_error_naming_key_and_value(tmp_path: Path, line: str, words) -> None:
    if words is None:
        assert load(tmp_path, line + "\n").policy.repos == ("app",)
        return
    text = "\n".join(problems_of(tmp_path, line + "\n"))
    for word in words:
        assert word in text, text


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("SPARKJOY_MAX_AGE", "forever", ["SPARKJOY_MAX_AGE", "'forever'"]),
        ("SPARKJOY_KEEP_RECENT", "-3", ["SPARKJOY_KEEP_RECENT", "at least 0"]),
        ("SPARKJOY_VOLUMES", "yes", ["SPARKJOY_VOLUMES", "'yes'"]),
        ("SPARKJOY_ENGINE_HOST", "docker.sock", ["SPARKJOY_ENGINE_HOST", "'docker.sock'"]),
        # Found by the fuzz: expanding the home of a user that does not exist raised RuntimeError.
        ("SPARKJOY_DAEMON_DATA_ROOT", "~nosuchuser-sj/x", ["SPARKJOY_DAEMON_DATA_ROOT", "'~nosuchuser-sj/x'"]),
    ],
)
def test_a_wrong_variable_is_an_error_naming_it_and_its_value(tmp_path: Path, variable, value, words) -> None:
    text = "\n".join(problems_of(tmp_path, env={variable: value}))
    for word in words:
        assert word in text


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\xff\xfe\x00garbage\x80", "not a text file"),
        (bytes(range(256)), "not a text file"),
        ("max_age = \n", "not valid TOML"),
        ("[engine\nhost = 1", "not valid TOML"),
        ("max_age = '6h'\nmax_age = '7h'\n", "not valid TOML"),
        ("\x00\x01\x02", "not valid TOML"),
        ("a = " + "[" * 5000 + "]" * 5000, "not valid TOML"),
        ("a = " + "{b = " * 3000 + "1" + "}" * 3000, "not valid TOML"),
    ],
)
def test_a_file_that_is_not_toml_is_an_error_naming_the_file(tmp_path: Path, content, words: str) -> None:
    (problem,) = problems_of(tmp_path, content)
    assert words in problem and str(tmp_path / "config.toml") in problem


def test_a_missing_config_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load({}, str(tmp_path / "nope.toml"), {"HOME": str(tmp_path)})


def test_a_config_file_that_is_a_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a file"):
        config.load({}, str(tmp_path), {"HOME": str(tmp_path)})


def test_a_config_file_named_by_the_environment_is_read(tmp_path: Path) -> None:
    named = tmp_path / "named.toml"
    named.write_text("keep_recent = 5\n")
    assert config.load({}, None, {"SPARKJOY_CONFIG": str(named), "HOME": str(tmp_path)}).policy.keep_recent == 5


# -- fuzz ------------------------------------------------------------------------------------

KEY_NAMES = [k.name for k in config.all_keys()] + ["engine", "daemon", "max_agee", "", "0"]
TOML_VALUES = st.sampled_from(
    ['"6h"', '"-1s"', "-1", "0", "2", "1e400", "nan", "inf", "true", '"yes"', '""', "[]", '["a", ""]',
     '["p=1", "=x"]', "{}", "{a = 1}", "1979-05-27T07:32:00Z", "07:32:00", '"\\u0000"', '"' + "9" * 500 + '"',
     '"9999999999999999999999PB"', '"100%"', '"unix:///x"', '"tcp://h:1"', "[[1]]", '"1h30m"', "0x10", "'''x'''"]
)
TOML_LINES = st.one_of(
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(KEY_NAMES), TOML_VALUES),
    st.sampled_from(["[engine]", "[daemon]", "[nope]", "[[engine]]", "[engine.x]", "#", "", "=", "[", "key ="]),
    st.text(max_size=30),
)
TOMLISH = st.builds("\n".join, st.lists(TOML_LINES, max_size=8))
CONTENT = st.one_of(TOMLISH, st.binary(max_size=200), TOMLISH.map(lambda t: t.encode("utf-8", "surrogatepass")))


@settings(
    max_examples=FUZZ_EXAMPLES["config_file"],
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(CONTENT)
def test_any_config_file_gives_settings_or_a_config_error_and_nothing_else(content) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "config.toml"
        data = content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass")
        path.write_bytes(data)
        try:
            loaded = config.load({}, str(path), {"HOME": directory})
        except ConfigError as error:
            assert error.exit_code is ExitCode.USAGE
            assert error.problems and all(isinstance(p, str) and p for p in error.problems)
            # Each problem names the file, and in a file that is valid TOML, a key it holds.
            assert all(str(path) in p for p in error.problems), error.problems
            try:
                document = tomllib.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, tomllib.TOMLDecodeError):
                return
            keys = set(document) | {f"{table}.{key}" for table, inner in document.items()
                                    if isinstance(inner, dict) for key in inner}
            keys |= {f"[{table}] {key}" for table, inner in document.items() if isinstance(inner, dict) for key in inner}
            for problem in error.problems:
                assert any(f" {key} " in problem or f"key {key}" in problem for key in keys), (problem, keys)
        else:
            assert isinstance(loaded, config.Settings)


ENV_NAMES = [k.env for k in config.all_keys()]


@settings(max_examples=FUZZ_EXAMPLES["environment"], deadline=None, derandomize=False)
@given(st.dictionaries(st.sampled_from(ENV_NAMES), st.text(max_size=30) | TOML_VALUES, max_size=6))
def test_any_environment_gives_settings_or_a_config_error_and_nothing_else(environ) -> None:
    environ = {k: v.replace("\x00", "") for k, v in environ.items()}
    with tempfile.TemporaryDirectory() as directory:
        try:
            loaded = config.load({}, None, {"HOME": directory, "XDG_CONFIG_HOME": directory, **environ})
        except ConfigError as error:
            assert error.exit_code is ExitCode.USAGE and error.problems
            # Each problem names the variable and shows its value.
            for problem in error.problems:
                named = [name for name in environ if f"environment variable {name}:" in problem]
                assert named, (problem, environ)
                # Long values are shown cut short, never left out.
                assert any(repr(value)[:40] in problem for name in named
                           for value in (environ[name], environ[name].strip())), (problem, environ)
        else:
            assert isinstance(loaded, config.Settings)


# -- writing settings back (`sparkjoy config`) ---------------------------------------------------


def reloaded(tmp_path: Path, values) -> config.Settings:
    """Given checked values, write them as toml_lines does and load that file alone."""
    path = tmp_path / "written.toml"
    text = "\n".join(config.toml_lines(values)) + "\n"
    tomllib.loads(text)  # valid TOML, whatever load() makes of it
    path.write_text(text, encoding="utf-8")
    return config.load({}, str(path), {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")})


def test_the_defaults_are_written_in_sparkjoys_own_forms_and_read_back(tmp_path: Path) -> None:
    lines = config.toml_lines(load(tmp_path).values)
    for expected in ('max_age = "6h"', 'engine.timeout = "10m"', 'daemon.build_wait_limit = "30m"',
                     'daemon.quiet_period = "2m"', "keep_recent = 2", "labels = []", 'volumes = "none"',
                     "# engine.host: not set (DOCKER_HOST, docker context, or unix:///var/run/docker.sock)"):
        assert expected in lines, lines
    assert not any("null" in line or "21600s" in line or "= 600" in line for line in lines), lines
    assert reloaded(tmp_path, load(tmp_path).values).values == load(tmp_path).values


def test_every_key_set_to_an_awkward_value_is_written_so_it_reads_back_the_same(tmp_path: Path) -> None:
    loaded = load(tmp_path, "\n".join([
        'max_age = "1d30m"', "keep_recent = 0", 'labels = ["a=b=c", "k", "q=\\"x\\"", "e="]',
        'repos = ["my app/*", "tab\\tand\\\\", "\\u00e9\\u202e\\u0007"]', 'exclude = ["*:keep"]',
        "containers = false", "images = false", "build_cache = false", 'volumes = "all"',
        "[engine]", 'host = "tcp://h:2376"', 'timeout = "1h0m1.5s"',
        "[daemon]", "scope_from_builds = true", "disable = true", 'interval = "90m"',
        'high_watermark = "1234567B"', 'low_watermark = "1.2MB"', 'data_root = "/data root"',
        'state_db = "/s.db"', 'build_wait_limit = "250ms"', 'quiet_period = "0s"', 'listen = "off"',
        'log_format = "json"', "audit = true",
    ]) + "\n")
    lines = config.toml_lines(loaded.values)
    for expected in ('max_age = "1d30m"', 'engine.timeout = "1h1s"', 'daemon.interval = "1h30m"',
                     'daemon.high_watermark = "1234567B"', 'daemon.low_watermark = "1.2MB"',
                     'daemon.listen = "off"', 'labels = ["a=b=c", "k", "q=\\"x\\"", "e="]'):
        assert expected in lines, lines
    assert all(line.isprintable() for line in lines), lines
    assert reloaded(tmp_path, loaded.values).values == loaded.values


def test_a_negative_max_age_and_percentage_marks_read_back_the_same(tmp_path: Path) -> None:
    loaded = load(tmp_path, 'max_age = "-1s"\n[daemon]\nhigh_watermark = "85.125%"\nlow_watermark = "80%"\n')
    assert 'max_age = "-1s"' in config.toml_lines(loaded.values)
    assert reloaded(tmp_path, loaded.values).values == loaded.values


def _duration_text(delta: timedelta) -> str:
    size = abs(delta)
    return ("-" if delta < timedelta(0) else "") + f"{size.days}d{size.seconds}s{size.microseconds / 1000:.3f}ms"


_TEXTS = st.text(max_size=12)
_DURATIONS = st.timedeltas(min_value=timedelta(days=-36_000), max_value=timedelta(days=36_000)).map(_duration_text)
# Raw values per key, as a file could hold them; each is checked by the key's parser first.
RAW_VALUES = {
    "max_age": _DURATIONS, "keep_recent": st.integers(0, 10**9), "labels": st.lists(_TEXTS, max_size=3),
    "repos": st.lists(_TEXTS, max_size=3), "exclude": st.lists(_TEXTS, max_size=3),
    "containers": st.booleans(), "images": st.booleans(), "build_cache": st.booleans(),
    "volumes": st.sampled_from(["none", "anonymous", "all"]),
    "engine.host": st.sampled_from(["unix:///var/run/docker.sock", "tcp://h:2376", "ssh://u@h"])
    | _TEXTS.map(lambda t: "unix:///" + t),
    "engine.timeout": _DURATIONS,
    "daemon.scope_from_builds": st.booleans(), "daemon.disable": st.booleans(), "daemon.interval": _DURATIONS,
    "daemon.num_builds": st.integers(0, 10**9),
    "daemon.high_watermark": st.floats(0, 100).map(lambda p: f"{p!r}%") | st.integers(1, 2**63 - 1).map(lambda n: f"{n}B")
    | st.integers(1, 10**6).map(lambda n: f"{n / 1000}GB"),
    "daemon.low_watermark": st.floats(0, 100).map(lambda p: f"{p}%") | st.integers(1, 2**63 - 1).map(lambda n: f"{n}B"),
    "daemon.data_root": _TEXTS, "daemon.state_db": _TEXTS, "daemon.build_wait_limit": _DURATIONS,
    "daemon.quiet_period": _DURATIONS,
    "daemon.listen": st.sampled_from(["127.0.0.1:9867", "off", "[::1]:80", "0.0.0.0:1", "localhost:9"]),
    "daemon.log_format": st.sampled_from(["text", "json"]), "daemon.audit": st.booleans(),
}


def test_every_key_has_raw_values_for_the_round_trip() -> None:
    assert set(RAW_VALUES) == {f"{k.section}.{k.name}" if k.section else k.name for k in config.all_keys()}


@st.composite
def checked_values(draw):
    values = {}
    for key in config.all_keys():
        dotted = f"{key.section}.{key.name}" if key.section else key.name
        if draw(st.booleans()):
            values[dotted] = key.default
            continue
        try:
            values[dotted] = key.parse(draw(RAW_VALUES[dotted]))
        except (ValueError, TypeError):
            values[dotted] = key.default
    return values


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(checked_values())
def test_any_checked_settings_are_written_so_they_read_back_the_same(values) -> None:
    with tempfile.TemporaryDirectory() as directory:
        assert reloaded(Path(directory), values).values == values
