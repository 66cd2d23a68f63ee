"""The command line as a user meets it: the real `sparkjoy` console script in a subprocess,
against the private test engine (tests/engine.py), never the machine's own.

Every run gets an environment of its own (see `Env`): no DOCKER_HOST unless a test sets one,
an empty docker config directory (no contexts) and an empty sparkjoy config file, so nothing
on the machine leaks in. A run that would fall back to the default socket is a bug in the
test, so tests that unset DOCKER_HOST always give --host or a docker context instead.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sparkjoy import state
from sparkjoy.executor import DELETE_BATCH
from tests.engine import IsolatedEngine
from tests.faultproxy import FaultProxy, Rule, hook
from tests.fixtures import BUSYBOX_BASE, DOCKER_CLI, build, busybox_image, import_image, run_container
from tests.integration.support import inventory

SPARKJOY = Path(sys.executable).with_name("sparkjoy")
# Everything the mess holds counts as old, and no "newest per repository" is kept, so the
# plan is exactly: delete the old images (one dangling) and the exited container; keep the
# running container and its image.
EVERYTHING_OLD = ["--max-age=-1s", "--keep-recent", "0"]
OBJECT_KEYS = {"kind": str, "id": str, "names": list, "decision": str, "reason": str, "bytes": int}
KINDS = {"image", "container", "build-cache", "volume"}


# -- running the CLI -------------------------------------------------------------------------


@dataclass
class Env:
    """The environment of one sparkjoy run, built from nothing the machine has."""

    engine: IsolatedEngine
    tmp: Path
    vars: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        keep = {"PATH", "LANG", "LC_ALL", "TERM", "SYSTEMROOT"}
        self.vars = {k: v for k, v in os.environ.items() if k in keep}
        self.home = self.tmp / "home"
        self.docker_config = self.tmp / "docker-config"
        self.home.mkdir(exist_ok=True)
        self.docker_config.mkdir(exist_ok=True)
        empty = self.tmp / "empty.toml"
        empty.write_text("")
        # XDG_STATE_HOME too: as root the state database would default to the machine's own
        # /var/lib/sparkjoy/state.db.
        self.vars.update(HOME=str(self.home), DOCKER_CONFIG=str(self.docker_config),
                         XDG_CONFIG_HOME=str(self.tmp / "xdg"), XDG_STATE_HOME=str(self.tmp / "state"),
                         SPARKJOY_CONFIG=str(empty))


def audited(args: tuple[str, ...] | list[str]) -> list[str]:
    """A real prune runs with --audit (it fails if a kept object went missing), as every
    integration test of a real prune does; other commands are left as they are."""
    args = list(args)
    if args[:1] == ["prune"] and "--dry-run" not in args and "--audit" not in args:
        args.insert(1, "--audit")
    return args


def sparkjoy(env: Env, *args: str, host: bool = True, extra_env: dict[str, str] | None = None,
             stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    """Run the console script; with `host`, `--host` points at the test engine."""
    command = [str(SPARKJOY), *audited(args)] + (["--host", env.engine.host] if host else [])
    variables = dict(env.vars, **(extra_env or {}))
    return subprocess.run(command, env=variables, stdin=stdin, capture_output=True, text=True, timeout=300)


def sparkjoy_in_pty(env: Env, *args: str, answer: str) -> subprocess.CompletedProcess:
    """Run with stdin on a pseudo-terminal (so sparkjoy asks), answering `answer` to the question.

    The answer is typed ahead: the terminal keeps the line until sparkjoy reads it. stdout and
    stderr stay pipes, so the test reads them apart.
    """
    main, terminal = os.openpty()
    try:
        process = subprocess.Popen([str(SPARKJOY), *audited(args), "--host", env.engine.host], env=env.vars,
                                   stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.close(terminal)
        terminal = -1
        os.write(main, answer.encode() + (b"" if answer == "\x04" else b"\n"))
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if terminal != -1:
            os.close(terminal)
        os.close(main)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def expect(done: subprocess.CompletedProcess, code: int) -> subprocess.CompletedProcess:
    assert done.returncode == code, (
        f"exit {done.returncode}, expected {code}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    assert "Traceback" not in done.stderr, done.stderr
    return done


def one_json(done: subprocess.CompletedProcess) -> dict:
    """stdout must be exactly one JSON object."""
    data = json.loads(done.stdout)
    assert isinstance(data, dict)
    return data


def as_text(data: dict) -> str:
    return json.dumps(data)


# -- what is on the engine -------------------------------------------------------------------


@dataclass(frozen=True)
class Mess:
    runner_image: str  # used by the running container: kept
    running: str
    old_image: str  # tagged sjt/old:1, no container: deleted
    dangling: str  # no tag, no container: deleted
    exited: str  # stopped container: deleted
    rebuild: str  # tagged sjt/old:2, which it took from `dangling`: deleted

    @property
    def deleted(self) -> set[str]:
        return {self.old_image, self.dangling, self.exited, self.rebuild}

    @property
    def kept(self) -> set[str]:
        return {self.runner_image, self.running}


@pytest.fixture
def env(clean_engine: IsolatedEngine, tmp_path: Path) -> Env:
    return Env(clean_engine, tmp_path)


@pytest.fixture
def mess(clean_engine: IsolatedEngine) -> Mess:
    runner = busybox_image(clean_engine, "sjt/runner:1")
    running = run_container(clean_engine, runner, state="running")
    exited = run_container(clean_engine, runner, state="exited")
    old = import_image(clean_engine, 1_000_000, "sjt/old:1")
    # Dangling the usual way: tagged, then the tag moved to a rebuild (sjt/old:2, also old).
    dangling = import_image(clean_engine, 500_000, "sjt/old:2")
    rebuild = import_image(clean_engine, 500_000, "sjt/old:2")
    return Mess(runner, running, old, dangling, exited, rebuild)


@pytest.fixture
def doomed(clean_engine: IsolatedEngine) -> str:
    """One image a `prune -f` with EVERYTHING_OLD deletes: for tests that check a run which
    must fail early deletes nothing."""
    return import_image(clean_engine, 100_000, "sjt/doomed:1")


def all_ids(engine: IsolatedEngine) -> set[str]:
    return set().union(*inventory(engine).values())


# -- finding the engine ----------------------------------------------------------------------


def test_host_flag_finds_the_engine(env: Env, mess: Mess) -> None:
    data = one_json(expect(sparkjoy(env, "df", "--format", "json"), 0))
    assert mess.old_image in {o["id"] for o in data["objects"]}


def test_docker_host_finds_the_engine(env: Env, mess: Mess) -> None:
    done = sparkjoy(env, "df", "--format", "json", host=False, extra_env={"DOCKER_HOST": env.engine.host})
    assert mess.old_image in {o["id"] for o in one_json(expect(done, 0))["objects"]}


def test_host_flag_wins_over_docker_host(env: Env, mess: Mess, tmp_path: Path) -> None:
    dead = f"unix://{tmp_path}/nothing.sock"
    done = sparkjoy(env, "df", "--format", "json", extra_env={"DOCKER_HOST": dead})
    assert mess.old_image in {o["id"] for o in one_json(expect(done, 0))["objects"]}


def _create_context(env: Env, name: str, host: str, config_env: dict[str, str], use: bool) -> None:
    variables = {k: v for k, v in env.vars.items() if k not in ("DOCKER_CONFIG", "HOME")}
    variables.update(config_env)
    for command in (["context", "create", name, "--docker", f"host={host}"], ["context", "use", name]):
        if command[1] == "use" and not use:
            continue
        done = subprocess.run([DOCKER_CLI, *command], env=variables, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr


def test_current_docker_context_is_honoured_without_docker_host(env: Env, mess: Mess) -> None:
    """`docker context use` in $HOME/.docker (no DOCKER_CONFIG): sparkjoy follows it."""
    home_only = {"HOME": str(env.home)}
    _create_context(env, "sjtest", env.engine.host, home_only, use=True)
    assert (env.home / ".docker" / "contexts").is_dir()
    env.vars.pop("DOCKER_CONFIG")
    done = expect(sparkjoy(env, "df", "--format", "json", host=False), 0)
    assert mess.old_image in {o["id"] for o in one_json(done)["objects"]}


def test_docker_context_variable_picks_a_context_in_docker_config(env: Env, mess: Mess) -> None:
    """DOCKER_CONTEXT names a context made with DOCKER_CONFIG set; no config.json exists, as
    `docker context create` leaves it. The docker CLI finds the context; so must sparkjoy."""
    _create_context(env, "sjtest", env.engine.host, {"DOCKER_CONFIG": str(env.docker_config)}, use=False)
    assert not (env.docker_config / "config.json").exists()
    done = sparkjoy(env, "df", "--format", "json", host=False, extra_env={"DOCKER_CONTEXT": "sjtest"})
    assert mess.old_image in {o["id"] for o in one_json(expect(done, 0))["objects"]}


def test_docker_host_wins_over_the_current_context(env: Env, mess: Mess, tmp_path: Path) -> None:
    _create_context(env, "dead", f"unix://{tmp_path}/nothing.sock", {"DOCKER_CONFIG": str(env.docker_config)},
                    use=True)
    done = sparkjoy(env, "df", "--format", "json", host=False, extra_env={"DOCKER_HOST": env.engine.host})
    assert mess.old_image in {o["id"] for o in one_json(expect(done, 0))["objects"]}


def test_tls_variables_without_certificates_are_a_usage_error_naming_them(env: Env, tmp_path: Path) -> None:
    held, port = _refusing_tcp_port()  # should it ever connect, it reaches nothing
    with closing(held):
        done = sparkjoy(env, "df", host=False, extra_env={
            "DOCKER_HOST": f"tcp://127.0.0.1:{port}", "DOCKER_TLS_VERIFY": "1",
            "DOCKER_CERT_PATH": str(tmp_path / "none")})
    assert "DOCKER_TLS_VERIFY" in expect(done, 2).stderr


def test_an_unknown_docker_context_is_a_usage_error(env: Env) -> None:
    done = expect(sparkjoy(env, "df", host=False, extra_env={"DOCKER_CONTEXT": "nosuch"}), 2)
    assert "nosuch" in done.stderr


# -- an engine that is not there -------------------------------------------------------------


def _refusing_tcp_port() -> tuple[socket.socket, int]:
    """A loopback port that is bound but not listening: connections to it are refused, and no
    other process can start listening there while the socket is held."""
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.bind(("127.0.0.1", 0))
    return held, held.getsockname()[1]


def _assert_one_clear_message(done: subprocess.CompletedProcess, address: str, source: str) -> None:
    expect(done, 3)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    if address.startswith("tcp://"):
        # Plain TCP is warned about before anything is sent over it (tests/reliability/test_security.py);
        # the error is the one message after that warning.
        assert lines[0].startswith(f"sparkjoy: warning: the engine at {address} is reached over plain TCP"), done.stderr
        lines = lines[1:]
    assert lines[0].startswith("sparkjoy: error: cannot reach the Docker engine at " + address), done.stderr
    assert len(lines) <= 3, done.stderr  # one message, not a cascade
    assert source in done.stderr  # where the address came from
    assert "Fix:" in done.stderr and "--host" in done.stderr and "DOCKER_HOST" in done.stderr
    # Plain words for the cause, not the HTTP library's repr of nested exceptions.
    assert "HTTPConnectionPool" not in done.stderr and "FileNotFoundError(" not in done.stderr, done.stderr


@pytest.mark.parametrize("command", [["df"], ["prune", "-f"], ["prune", "--dry-run", "--format", "json"]])
def test_a_missing_socket_gives_one_clear_message_and_exit_3(env: Env, tmp_path: Path, command) -> None:
    address = f"unix://{tmp_path}/no-engine.sock"
    done = sparkjoy(env, *command, "--host", address, host=False)
    _assert_one_clear_message(done, address, "--host")
    assert "no socket" in done.stderr, done.stderr


def test_a_refused_tcp_port_gives_one_clear_message_and_exit_3(env: Env) -> None:
    held, port = _refusing_tcp_port()
    with closing(held):
        address = f"tcp://127.0.0.1:{port}"
        done = sparkjoy(env, "df", host=False, extra_env={"DOCKER_HOST": address})
    _assert_one_clear_message(done, address, "DOCKER_HOST")
    assert "connection refused" in done.stderr, done.stderr


def test_an_ssh_address_is_tried_over_ssh(env: Env) -> None:
    """ssh:// needs the SDK's ssh extra (paramiko); without it every ssh:// address failed
    with 'Install paramiko package to enable ssh:// support' instead of being tried."""
    held, port = _refusing_tcp_port()
    with closing(held):
        address = f"ssh://nobody@127.0.0.1:{port}"
        done = sparkjoy(env, "df", host=False, extra_env={"DOCKER_HOST": address})
    _assert_one_clear_message(done, address, "DOCKER_HOST")
    assert "paramiko" not in done.stderr, done.stderr


def test_an_unreachable_context_names_the_context(env: Env, tmp_path: Path) -> None:
    address = f"unix://{tmp_path}/no-engine.sock"
    _create_context(env, "gone", address, {"DOCKER_CONFIG": str(env.docker_config)}, use=True)
    _assert_one_clear_message(sparkjoy(env, "df", host=False), address, "docker context gone")


# -- confirmation ----------------------------------------------------------------------------


def test_prune_without_force_and_without_a_terminal_refuses_with_exit_4(env: Env, mess: Mess) -> None:
    before = all_ids(env.engine)
    done = expect(sparkjoy(env, "prune", *EVERYTHING_OLD), 4)
    assert "-f" in done.stderr and "terminal" in done.stderr
    assert all_ids(env.engine) == before


def test_answering_no_at_the_prompt_deletes_nothing(env: Env, mess: Mess) -> None:
    before = all_ids(env.engine)
    done = expect(sparkjoy_in_pty(env, "prune", *EVERYTHING_OLD, answer="n"), 4)
    # The plan and the question go to stderr, like docker's prompt.
    assert "sjt/old:1" in done.stderr and "Are you sure" in done.stderr and "nothing was deleted" in done.stderr
    assert all_ids(env.engine) == before


def test_end_of_input_at_the_prompt_is_a_no(env: Env, mess: Mess) -> None:
    """Ctrl-D at the question (end of input) aborts like "n": exit 4, nothing deleted."""
    before = all_ids(env.engine)
    done = expect(sparkjoy_in_pty(env, "prune", *EVERYTHING_OLD, answer="\x04"), 4)
    assert "nothing was deleted" in done.stderr
    assert all_ids(env.engine) == before


def test_answering_yes_at_the_prompt_deletes_the_plan(env: Env, mess: Mess) -> None:
    done = expect(sparkjoy_in_pty(env, "prune", *EVERYTHING_OLD, answer="y"), 0)
    assert "Total reclaimed space:" in done.stdout
    left = all_ids(env.engine)
    assert not (mess.deleted & left) and mess.kept <= left


# -- pruning ---------------------------------------------------------------------------------


def test_nothing_to_prune_is_success_and_needs_no_confirmation(env: Env) -> None:
    busybox_image(env.engine, "sjt/new:1")  # tagged just now: not old under the default policy
    done = expect(sparkjoy(env, "prune"), 0)
    assert "Nothing to prune." in done.stdout and done.stdout.rstrip().endswith("Total reclaimed space: 0B")
    data = one_json(expect(sparkjoy(env, "prune", "-f", "--format", "json"), 0))
    assert data["reclaimed_bytes"] == 0 and data["ok"] is True
    assert [o["result"] for o in data["objects"]] == ["kept"]


def test_force_deletes_without_asking(env: Env, mess: Mess) -> None:
    done = expect(sparkjoy(env, "prune", "-f", *EVERYTHING_OLD), 0)
    assert "Are you sure" not in done.stderr
    assert done.stdout.rstrip().splitlines()[-1].startswith("Total reclaimed space: ")
    left = all_ids(env.engine)
    assert not (mess.deleted & left) and mess.kept <= left


def test_quiet_prints_only_the_ids_of_what_it_removed(env: Env, mess: Mess) -> None:
    dry = expect(sparkjoy(env, "prune", "--dry-run", "-q", *EVERYTHING_OLD), 0)
    assert set(dry.stdout.split()) == mess.deleted and len(dry.stdout.splitlines()) == 4
    done = expect(sparkjoy(env, "prune", "-f", "-q", *EVERYTHING_OLD), 0)
    assert set(done.stdout.split()) == mess.deleted and len(done.stdout.splitlines()) == 4


def test_dry_run_json_lists_every_object_with_decision_reason_and_bytes(env: Env, mess: Mess) -> None:
    before = inventory(env.engine)
    data = one_json(expect(sparkjoy(env, "prune", "--dry-run", "--format", "json", *EVERYTHING_OLD), 0))
    for o in data["objects"]:
        for key, kind in OBJECT_KEYS.items():
            assert isinstance(o[key], kind), (key, o)
        assert o["kind"] in KINDS and o["decision"] in ("delete", "keep") and o["reason"]
        assert all(isinstance(n, str) for n in o["names"]) and o["bytes"] >= 0
    listed = {kind: {o["id"] for o in data["objects"] if o["kind"] == kind} for kind in KINDS}
    assert listed == before  # every object on the engine, each once
    assert len(data["objects"]) == sum(len(ids) for ids in before.values())
    assert {o["id"] for o in data["objects"] if o["decision"] == "delete"} == mess.deleted
    assert isinstance(data["predicted_bytes"], int)
    assert data["predicted_bytes"] == sum(o["bytes"] for o in data["objects"] if o["decision"] == "delete")
    assert data["predicted_bytes"] >= 1_500_000  # the two images' own layers
    assert "sjt/old:1" in [n for o in data["objects"] for n in o["names"]]
    assert inventory(env.engine) == before  # a dry run deletes nothing


def test_real_run_json_adds_reclaimed_bytes_and_a_result_per_object(env: Env, mess: Mess) -> None:
    dry = one_json(expect(sparkjoy(env, "prune", "--dry-run", "--format", "json", *EVERYTHING_OLD), 0))
    done = expect(sparkjoy(env, "prune", "-f", "--format", "json", *EVERYTHING_OLD), 0)
    data = one_json(done)
    assert isinstance(data["reclaimed_bytes"], int) and data["reclaimed_bytes"] > 0
    assert isinstance(data["predicted_bytes"], int)
    results = {o["id"]: o["result"] for o in data["objects"]}
    assert {i for i, r in results.items() if r == "deleted"} == mess.deleted
    assert {i for i, r in results.items() if r == "kept"} == mess.kept
    # The same objects and decisions as the dry run: the dry run told the truth. (Reasons
    # name ages, "finished 2s ago", which move on between the two runs.)
    strip = lambda d: sorted((o["kind"], o["id"], o["decision"]) for o in d["objects"])  # noqa: E731
    assert strip(dry) == strip(data)
    assert data["ok"] is True and data["failures"] == 0


def test_audit_checks_that_kept_objects_are_still_there(env: Env, mess: Mess) -> None:
    done = expect(sparkjoy(env, "prune", "-f", "--audit", *EVERYTHING_OLD), 0)
    assert "Audit: every object the plan kept is still there." in done.stdout
    data = one_json(expect(sparkjoy(env, "prune", "-f", "--audit", "--format", "json", *EVERYTHING_OLD), 0))
    assert data["audit"] == [] and data["ok"] is True


def test_a_deletion_the_engine_fails_makes_a_partial_failure_exit_1(env: Env, mess: Mess) -> None:
    """A real failure, no mocks: the exited container's directory in the engine's data root is
    made immutable, so the engine fails to remove it ("unable to remove filesystem", as on
    hosts with a busy or read-only mount). The other deletions go on; the run exits 1."""
    container_dir = env.engine.data_root / "containers" / mess.exited
    subprocess.run(["chattr", "+i", str(container_dir)], check=True)
    try:
        done = sparkjoy(env, "prune", "-f", "--format", "json", *EVERYTHING_OLD)
        data = one_json(expect(done, 1))
        table = expect(sparkjoy(env, "prune", "-f", "--max-age=-1s", "--keep-recent", "0", "--no-images"), 1)
    finally:
        subprocess.run(["chattr", "-i", str(container_dir)], check=True)
    results = {o["id"]: o for o in data["objects"]}
    assert results[mess.exited]["result"] == "failed", results[mess.exited]
    assert results[mess.exited]["detail"]
    assert results[mess.old_image]["result"] == "deleted" and results[mess.dangling]["result"] == "deleted"
    assert data["ok"] is False and data["failures"] == 1
    assert "FAILED: 1 object(s)" in table.stdout


def test_ctrl_c_during_a_prune_finishes_the_object_in_progress_and_stops(env: Env, clean_engine) -> None:
    """Ctrl-C while deleting: the object in hand is finished (an image never keeps half its
    tags), the rest is reported as not attempted, and the run exits 1 (stopped early)."""
    # Two batches and more: -v reports a batch's objects as it ends, and the signal comes then.
    images = {import_image(clean_engine, 10_000, [f"sjt/many:{n}", f"sjt/also:{n}"]): {f"sjt/many:{n}",
                                                                                      f"sjt/also:{n}"}
              for n in range(2 * DELETE_BATCH + 6)}
    # The run must still be deleting when the Ctrl-C comes, however fast the engine or slow the
    # test: through a proxy, the first batch's images (in the plan's order, as the dry run shows
    # it) go, and every later image's last step (its delete by ID) waits until the signal was
    # sent. Without the gate a busy machine let the whole run end first (exit 0, nothing left
    # to stop).
    dry = one_json(sparkjoy(env, "prune", "--dry-run", "--format", "json", *EVERYTHING_OLD))
    order = [o["id"] for o in dry["objects"] if o["kind"] == "image" and o["decision"] == "delete"]
    assert set(order) == set(images)
    first_batch = {f"/images/{image_id}" for image_id in order[:DELETE_BATCH]}
    signalled = threading.Event()

    def hold_after_the_first_batch(request) -> None:
        if request.path not in first_batch:
            signalled.wait(120)

    with FaultProxy(clean_engine.socket_path) as proxy:
        proxy.add(Rule("DELETE", r"^/images/sha256:", hook(hold_after_the_first_batch, name="gated")))
        process = subprocess.Popen([str(SPARKJOY), *audited(["prune", "-f", "-v", *EVERYTHING_OLD]), "--host",
                                    proxy.host],
                                   env=env.vars, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            first = process.stderr.readline()  # -v reports each object as its batch ends
            assert first.startswith("deleted: image"), first
            process.send_signal(signal.SIGINT)
            signalled.set()
            stdout, stderr = process.communicate(timeout=300)
        finally:
            signalled.set()
            if process.poll() is None:
                process.kill()
    done = expect(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), 1)
    assert "Stopped early" in done.stdout and "not attempted" in done.stdout, done.stdout
    with closing(clean_engine.client()) as client:
        left = {i["Id"]: set(i.get("RepoTags") or []) for i in client.api.images()}
    gone = [i for i in images if i not in left]
    assert 1 <= len(gone) < len(images)
    for image_id, tags in images.items():
        assert image_id not in left or left[image_id] == tags, f"{image_id} kept only {left[image_id]}"


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, named",
    [
        (b'max_agee = "1h"\n', ["max_agee", "max_age"]),  # unknown key, with a suggestion
        (b'max_age = "soon"\n', ["max_age", "soon"]),  # bad value
        (b'keep_recent = -1\n', ["keep_recent", "-1"]),
        (b'[engine]\nhots = "unix:///x"\n', ["hots"]),
        (b'max_age = \n', ["not valid TOML"]),
        (b"\x00\xff\xfe\x89PNG\r\n\x1a\n\x00\x00", ["not a text file"]),
    ],
    ids=["unknown-key", "bad-duration", "negative-keep", "unknown-engine-key", "invalid-toml", "binary"],
)
def test_a_bad_config_file_is_exit_2_naming_the_problem_and_deletes_nothing(
        env: Env, doomed: str, tmp_path: Path, content: bytes, named: list[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    before = all_ids(env.engine)
    done = expect(sparkjoy(env, "prune", "-f", "--config", str(path), *EVERYTHING_OLD), 2)
    assert str(path) in done.stderr
    for word in named:
        assert word in done.stderr, done.stderr
    assert all_ids(env.engine) == before


def test_an_empty_config_file_is_fine(env: Env, doomed: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_bytes(b"")
    expect(sparkjoy(env, "prune", "-f", "--config", str(path), *EVERYTHING_OLD), 0)
    assert doomed not in all_ids(env.engine)


def test_a_missing_config_file_is_exit_2(env: Env, doomed: str, tmp_path: Path) -> None:
    done = expect(sparkjoy(env, "prune", "-f", "--config", str(tmp_path / "nope.toml"), *EVERYTHING_OLD), 2)
    assert "nope.toml" in done.stderr
    assert doomed in all_ids(env.engine)


@pytest.mark.parametrize(
    "args, extra_env, named",
    [
        (["--max-age", "soon"], {}, ["--max-age", "soon"]),
        (["--keep-recent", "-1"], {}, ["keep_recent", "-1"]),
        (["--keep-recent", "many"], {}, ["--keep-recent", "many"]),
        (["--as-of", "yesterday"], {}, ["--as-of", "yesterday"]),
        (["--volumes=some"], {}, ["--volumes", "some"]),
        (["--label", "=x"], {}, ["label", "=x"]),
        ([], {"SPARKJOY_MAX_AGE": "soon"}, ["SPARKJOY_MAX_AGE", "soon"]),
        ([], {"SPARKJOY_KEEP_RECENT": "lots"}, ["SPARKJOY_KEEP_RECENT", "lots"]),
        ([], {"SPARKJOY_ENGINE_TIMEOUT": "0s"}, ["SPARKJOY_ENGINE_TIMEOUT"]),
    ],
    ids=["max-age", "keep-negative", "keep-word", "as-of", "volumes", "label", "env-max-age", "env-keep",
         "env-timeout"],
)
def test_bad_flags_and_environment_values_are_exit_2_naming_them_and_delete_nothing(
        env: Env, doomed: str, args: list[str], extra_env: dict[str, str], named: list[str]) -> None:
    before = all_ids(env.engine)
    # The bad value comes after the good ones, so it is the one that counts.
    done = expect(sparkjoy(env, "prune", "-f", *EVERYTHING_OLD, *args, extra_env=extra_env), 2)
    for word in named:
        assert word in done.stderr, done.stderr
    assert all_ids(env.engine) == before


def test_flags_win_over_environment_over_config_file(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('keep_recent = 5\nmax_age = "2h"\nexclude = ["a:*"]\n')
    done = expect(sparkjoy(env, "config", "--config", str(path), "--keep-recent", "7",
                           extra_env={"SPARKJOY_KEEP_RECENT": "6", "SPARKJOY_MAX_AGE": "3h"}), 0)
    assert "keep_recent = 7" in done.stdout
    assert 'max_age = "3h"' in done.stdout
    assert 'exclude = ["a:*"]' in done.stdout


# -- df ----------------------------------------------------------------------------------------


@pytest.fixture
def df_mess(mess: Mess, clean_engine: IsolatedEngine) -> Mess:
    build(clean_engine, BUSYBOX_BASE + "RUN echo hi > /hi\n", "sjt/built:1")  # BuildKit: build cache
    with closing(clean_engine.client()) as client:
        client.volumes.create("sjt-volume")
    return mess


def test_df_table_shows_count_bytes_and_reclaimable_per_kind_and_the_largest(env: Env, df_mess: Mess) -> None:
    counts = {kind: len(ids) for kind, ids in inventory(env.engine).items()}
    done = expect(sparkjoy(env, "df", *EVERYTHING_OLD), 0)
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["TYPE", "TOTAL", "SIZE", "RECLAIMABLE", "HELD", "BY", "CACHE"]
    rows = {line[:15].strip(): line[15:].split() for line in lines[1:5]}
    assert int(rows["Images"][0]) == counts["image"]
    assert int(rows["Build cache"][0]) == counts["build-cache"] > 0
    assert int(rows["Containers"][0]) == counts["container"]
    assert int(rows["Local volumes"][0]) == counts["volume"] == 1
    assert rows["Images"][1].endswith("MB") and rows["Images"][2].endswith("MB")  # size, reclaimable
    assert f"Images, largest {min(5, counts['image'])} of {counts['image']}:" in done.stdout
    assert "Total on disk:" in done.stdout
    assert "sjt/old:1" in done.stdout  # the largest image is listed by name


def test_a_repo_glob_that_matches_no_repository_is_warned_of_and_json_stays_whole(env: Env, mess: Mess) -> None:
    done = expect(sparkjoy(env, "prune", "--dry-run", "--format", "json", "--repo", "sjt", "--repo", "sjt/*"), 0)
    one_json(done)
    assert "warning: --repo sjt (or the repos setting) matches no repository on this engine" in done.stderr, done.stderr
    assert "sjt/old" in done.stderr  # some repositories there are, to pick from
    assert "--repo sjt/*" not in done.stderr


def test_an_exclude_glob_that_matches_no_image_is_warned_of_and_json_stays_whole(env: Env, mess: Mess) -> None:
    done = expect(sparkjoy(env, "prune", "--dry-run", "--format", "json", "--exclude", "nomatch:*",
                           "--exclude", "sjt/old:*"), 0)
    one_json(done)
    assert "warning: --exclude nomatch:* (or the exclude setting) matches no image on this engine" in done.stderr, \
        done.stderr
    assert "--exclude sjt/old:*" not in done.stderr


def test_runs_keep_their_state_in_the_tests_directory_never_the_machines(env: Env, mess: Mess) -> None:
    # As root the default is /var/lib/sparkjoy/state.db: a test must never write the machine's.
    expect(sparkjoy(env, "df"), 0)
    assert (env.tmp / "state" / "sparkjoy" / "state.db").is_file()


def test_a_config_file_shared_with_the_daemon_serves_every_command_and_its_state_db(env: Env, mess: Mess) -> None:
    # Once, `df` and `prune` refused a file with a [daemon] section ("unknown key daemon"), the
    # file the docs deploy for the service, and so could not share the daemon's state_db.
    shared = env.tmp / "shared"
    config_file = env.tmp / "sparkjoy.toml"
    config_file.write_text(f'keep_recent = 0\n\n[daemon]\ninterval = "1h"\nstate_db = "{shared / "state.db"}"\n')
    expect(sparkjoy(env, "df", "--config", str(config_file)), 0)
    expect(sparkjoy(env, "prune", "--dry-run", "--config", str(config_file)), 0)
    expect(sparkjoy(env, "prune", "--force", "--max-age=-1s", "--config", str(config_file)), 0)
    assert not mess.deleted & all_ids(env.engine)  # keep_recent = 0 from the file took effect
    remembered = state.State.open(shared / "state.db", env.engine.host)
    try:
        assert mess.runner_image in remembered.memory().first_seen  # the image in use, which stays, seen
    finally:
        remembered.close()
    assert not (env.tmp / "state" / "sparkjoy" / "state.db").exists()  # not the default place


def test_state_db_names_the_memory_df_and_prune_use_as_run_does(env: Env, mess: Mess) -> None:
    chosen = env.tmp / "elsewhere" / "daemon.db"
    expect(sparkjoy(env, "prune", "--dry-run", "--state-db", str(chosen)), 0)
    expect(sparkjoy(env, "df", "--state-db", str(chosen)), 0)
    assert chosen.is_file()
    assert not (env.tmp / "state" / "sparkjoy" / "state.db").exists()
    done = expect(sparkjoy(env, "config", "--state-db", str(chosen), host=False), 0)
    assert f'daemon.state_db = "{chosen}"' in done.stdout


def test_a_misspelt_variable_stops_a_prune_before_it_deletes_anything(env: Env, mess: Mess) -> None:
    before = all_ids(env.engine)
    done = expect(sparkjoy(env, "prune", "--force", "--max-age=-1s",
                           extra_env={"SPARKJOY_KEEP_RECNET": "5"}), 2)
    assert "SPARKJOY_KEEP_RECNET" in done.stderr and "did you mean SPARKJOY_KEEP_RECENT?" in done.stderr, done.stderr
    assert all_ids(env.engine) == before


def test_df_verbose_lists_every_object(env: Env, df_mess: Mess) -> None:
    done = expect(sparkjoy(env, "df", "-v"), 0)
    for ids in inventory(env.engine).values():
        for object_id in ids:
            short = object_id if len(object_id) <= 24 else object_id.split(":")[-1][:12]
            assert short in done.stdout, object_id


def test_df_json_gives_the_same_data(env: Env, df_mess: Mess) -> None:
    before = inventory(env.engine)
    data = one_json(expect(sparkjoy(env, "df", "--format", "json", *EVERYTHING_OLD), 0))
    summary = {s["kind"]: s for s in data["summary"]}
    assert set(summary) == KINDS
    for kind, s in summary.items():
        assert s["count"] == len(before[kind])
        assert all(isinstance(s[k], int) and s[k] >= 0 for k in ("bytes", "reclaimable_bytes",
                                                                     "held_by_cache_bytes", "freed_with_cache_bytes"))
    assert summary["image"]["bytes"] > 0 and summary["image"]["reclaimable_bytes"] >= 1_500_000
    assert {kind: {o["id"] for o in data["objects"] if o["kind"] == kind} for kind in KINDS} == before
    for o in data["objects"]:
        assert isinstance(o["unique_bytes"], int) and o["unique_bytes"] >= 0
    assert isinstance(data["total_bytes"], int) and data["total_bytes"] > 0
    assert data["predicted_bytes"] == sum(s["reclaimable_bytes"] for s in summary.values())
    # Per kind from the objects: what the records free is the cache's own plus the layers they held.
    records = sum(o["bytes"] for o in data["objects"] if o["kind"] == "build-cache")
    assert records == summary["build-cache"]["reclaimable_bytes"] + summary["image"]["freed_with_cache_bytes"]


# -- help --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["df"], ["prune"], ["config"]])
def test_help_works_and_mentions_the_exit_codes(command: list[str], tmp_path: Path) -> None:
    done = subprocess.run([str(SPARKJOY), *command, "--help"], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)})
    expect(done, 0)
    text = " ".join(done.stdout.split())
    assert "Usage: sparkjoy" in text
    assert "Exit codes:" in text and ("2 usage or config error" in text or "2 a setting is wrong" in text), done.stdout
    if command != ["config"]:  # the only command that never connects
        assert "3 engine unreachable" in text, done.stdout
