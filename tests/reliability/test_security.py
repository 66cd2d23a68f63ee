"""Security: no shell, verified TLS or a warning, and no secrets in what sparkjoy prints or keeps.

See docs/security.md for what these protect and how to run sparkjoy with the least access.
"""

from __future__ import annotations

import ast
import base64
import json
import logging
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from sparkjoy.engine.connect import insecure_transport, resolve

from tests import fixtures
from tests.reliability.support import GREEDY_FLAGS, cli

SOURCE = Path(__file__).resolve().parents[2] / "src" / "sparkjoy"
# The one place that may start a process: `sparkjoy build -- COMMAND` runs the user's own
# build command, as an argument list, never through a shell.
MAY_SPAWN = {"cli_daemon.py"}
SPAWNING_CALLS = {
    ("subprocess", "Popen"), ("subprocess", "run"), ("subprocess", "call"), ("subprocess", "check_call"),
    ("subprocess", "check_output"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput"),
    ("os", "system"), ("os", "popen"), ("os", "execv"), ("os", "execvp"), ("os", "execvpe"), ("os", "execl"),
    ("os", "execlp"), ("os", "spawnv"), ("os", "spawnl"), ("os", "posix_spawn"), ("os", "posix_spawnp"),
    ("pty", "spawn"), ("asyncio", "create_subprocess_shell"), ("asyncio", "create_subprocess_exec"),
}


def _python_files() -> list[Path]:
    return sorted(p for p in SOURCE.rglob("*.py") if "__pycache__" not in p.parts)


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
            yield node, (node.func.value.id, node.func.attr)


def test_sparkjoy_never_runs_a_shell_and_only_the_build_command_spawns_a_process(count):
    found = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, name in _calls(tree):
            for keyword in node.keywords:
                if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and not keyword.value.value):
                    found.append(f"{path.name}:{node.lineno} passes shell={ast.unparse(keyword.value)}")
            if name in SPAWNING_CALLS:
                if path.name not in MAY_SPAWN:
                    found.append(f"{path.name}:{node.lineno} calls {'.'.join(name)}")
                elif name != ("subprocess", "Popen") or not node.args or isinstance(node.args[0], (ast.Constant, ast.JoinedStr)):
                    found.append(f"{path.name}:{node.lineno}: {'.'.join(name)} must take an argument list")
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if {"pty", "commands"} & set(names) or (
                        "subprocess" in names and path.name not in MAY_SPAWN):
                    found.append(f"{path.name}:{node.lineno} imports {names}")
    count(files_scanned=len(_python_files()))
    assert not found, found


def test_sparkjoy_build_runs_the_command_as_an_argument_list_not_a_shell(tmp_path):
    """Shell syntax in the command is passed through as plain arguments: nothing expands it."""
    marker = tmp_path / "expanded"
    run = cli("unix:///nonexistent.sock", "build", "--", "/bin/busybox", "echo", f"$(touch {marker})", ";", "id",
              env={"SPARKJOY_DAEMON_LISTEN": "off"})
    assert run.returncode == 0, run.stderr
    assert f"$(touch {marker}) ; id" in run.stdout
    assert not marker.exists()


@pytest.mark.parametrize("environment, problem", [
    ({"DOCKER_HOST": "tcp://203.0.113.7:2375"}, "plain TCP"),
    ({"DOCKER_HOST": "tcp://203.0.113.7:2376", "DOCKER_CERT_PATH": "{certs}"}, "does not verify"),
    ({"DOCKER_HOST": "tcp://203.0.113.7:2376", "DOCKER_CERT_PATH": "{certs}", "DOCKER_TLS_VERIFY": "1"}, None),
    ({"DOCKER_HOST": "unix:///run/docker.sock"}, None),
    ({"DOCKER_HOST": "ssh://builder@203.0.113.7"}, None),
], ids=["plain tcp warns", "TLS without verification warns", "verified TLS is quiet", "unix socket is quiet",
        "ssh is quiet"])
def test_a_tcp_engine_is_verified_or_the_user_is_warned(environment, problem, tmp_path, caplog):
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("not checked until a connection is made")
    environment = {k: v.replace("{certs}", str(tmp_path)) for k, v in environment.items()}
    with caplog.at_level(logging.WARNING, logger="sparkjoy.engine"):
        connection = resolve(None, environment)
    warned = [r.getMessage() for r in caplog.records if r.name == "sparkjoy.engine"]
    if problem is None:
        assert insecure_transport(connection) is None and not warned
        if environment.get("DOCKER_TLS_VERIFY"):
            assert connection.tls.verify, "verification must be on"
    else:
        assert problem in insecure_transport(connection)
        assert len(warned) == 1 and problem in warned[0]


def test_the_command_line_prints_the_plain_tcp_warning():
    run = cli("tcp://127.0.0.1:9", "df", "--timeout", "2s")
    assert run.returncode == 3
    assert "sparkjoy: warning:" in run.stderr and "plain TCP" in run.stderr
    assert "Traceback" not in run.stderr


SECRET = "hunter2-s3cr3t-Zq8xW"


def test_no_secret_from_container_env_labels_or_registry_auth_reaches_output_or_state(clean_engine, tmp_path,
                                                                                        count):
    """Container environments and `~/.docker/config.json` credentials are never read into a
    report, a log line or the state database, whatever the objects hold."""
    engine = clean_engine
    image = fixtures.busybox_image(engine, "secret/app:1")
    with closing(engine.client()) as client:
        for state in ("exited", "running"):
            container = client.containers.create(image, command=[fixtures.BUSYBOX, "sleep", "0" if state == "exited"
                                                                 else "3600"],
                                                 environment={"API_TOKEN": SECRET, "PASSWORD": SECRET},
                                                 network_mode="none", stop_signal="SIGKILL")
            container.start()
            if state == "exited":
                container.wait(timeout=30)
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    auth = base64.b64encode(f"robot:{SECRET}".encode()).decode()
    (home / ".docker" / "config.json").write_text(json.dumps({
        "auths": {"registry.example.com": {"auth": auth}, "https://index.docker.io/v1/": {"auth": auth}},
        "credsStore": "", "HttpHeaders": {"X-Token": SECRET}}))
    state_dir = tmp_path / "state"
    environment = {"HOME": str(home), "DOCKER_CONFIG": str(home / ".docker"), "XDG_STATE_HOME": str(state_dir),
                   "XDG_DATA_HOME": str(state_dir), "XDG_CACHE_HOME": str(state_dir)}

    runs = [
        cli(engine.host, "df", "-v", env=environment),
        cli(engine.host, "df", "--format", "json", env=environment),
        cli(engine.host, "prune", "--dry-run", "-v", *GREEDY_FLAGS, env=environment),
        cli(engine.host, "prune", "--dry-run", "--format", "json", *GREEDY_FLAGS, env=environment),
        cli(engine.host, "prune", "-f", "-v", "--audit", *GREEDY_FLAGS, env=environment),
        cli(engine.host, "config", env=environment),
    ]
    count(runs=len(runs))
    for run in runs:
        assert run.returncode == 0, run.stderr
        for text in (run.stdout, run.stderr):
            assert SECRET not in text and auth not in text
    stored = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent != home / ".docker"]
    assert any(p.name == "state.db" for p in stored), "the state database was not where the test looks"
    for path in stored:
        data = path.read_bytes()
        assert SECRET.encode() not in data and auth.encode() not in data, path
        if data.startswith(b"SQLite format 3"):
            with closing(sqlite3.connect(path)) as database:
                dump = "\n".join(database.iterdump())
            assert SECRET not in dump and auth not in dump, path


def test_the_source_never_reads_container_environments_or_registry_credentials():
    """Belt and braces for the test above: the words that would do it are not in the code."""
    found = []
    for path in _python_files():
        text = path.read_text()
        for needle in ('"Env"', "'Env'", '"auths"', "'auths'", "credsStore", "credHelpers", "get_credential",
                       "load_config(", "docker.auth"):
            if needle in text:
                found.append(f"{path.name}: {needle}")
    assert not found, found


def test_no_secret_reaches_the_daemons_log_or_metrics(clean_engine, tmp_path, count):
    """The daemon's debug log (every decision and object, JSON lines) and its /metrics hold no
    container environment and no registry credential, through a whole prune."""
    import re
    import signal
    import urllib.request

    from tests.daemon.support import daemon_process
    from tests.reliability.support import SPARKJOY, cli_environment

    engine = clean_engine
    image = fixtures.busybox_image(engine, "secret/app:1")
    old = fixtures.import_image(engine, 10_000, "secret/old:1")
    with closing(engine.client()) as client:
        container = client.containers.create(image, command=[fixtures.BUSYBOX, "true"],
                                             environment={"API_TOKEN": SECRET}, network_mode="none")
        container.start()
        container.wait(timeout=30)
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    auth = base64.b64encode(f"robot:{SECRET}".encode()).decode()
    (home / ".docker" / "config.json").write_text(json.dumps({"auths": {"registry.example.com": {"auth": auth}}}))
    environment = cli_environment(engine.host, {"HOME": str(home), "DOCKER_CONFIG": str(home / ".docker"),
                                                "XDG_STATE_HOME": str(tmp_path / "state")})
    log_path = tmp_path / "daemon.log"
    command = [str(SPARKJOY), "run", "-v", "--log-format", "json", "--listen", "127.0.0.1:0",
               "--quiet-period", "1h", "--audit", *GREEDY_FLAGS, "--exclude", "secret/app:*"]
    with daemon_process(command, environment, log_path) as daemon:
        fixtures.wait_until(lambda: b"listening on http://" in log_path.read_bytes(), timeout=30,
                            what="the daemon to listen")
        port = re.search(rb"listening on http://127\.0\.0\.1:(\d+)", log_path.read_bytes()).group(1).decode()
        daemon.send_signal(signal.SIGUSR1)
        fixtures.wait_until(lambda: b"prune trigger=request" in log_path.read_bytes(), timeout=60,
                            what="the prune")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            metrics = answer.read()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    count(runs=1)
    logged = log_path.read_bytes()
    assert old.encode() in logged, "the debug log names every deleted object (so it was a real prune)"
    assert b"sparkjoy_prune_runs_total" in metrics
    for text in (logged, metrics):
        assert SECRET.encode() not in text and auth.encode() not in text


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and its key), made with openssl."""
    import subprocess

    key, cert = directory / f"{name}-key.pem", directory / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


class _TLSEngine:
    """A TLS server on 127.0.0.1 that answers every HTTP request like a ping; it counts the
    requests that got past the handshake."""

    def __init__(self, cert: Path, key: Path):
        import socket
        import ssl
        import threading

        self.requests = 0
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import ssl

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(client, server_side=True) as tls:
                    while tls.recv(65536):
                        self.requests += 1
                        tls.sendall(b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Type: text/plain\r\n"
                                    b"Content-Length: 2\r\n\r\nOK")
            except (ssl.SSLError, OSError):
                client.close()

    def close(self) -> None:
        self.listener.close()


def test_tls_to_a_tcp_engine_really_verifies_its_certificate_against_the_engines_ca_alone(tmp_path):
    """With DOCKER_TLS_VERIFY=1 an engine whose certificate the given CA did not sign is never
    talked to: the handshake fails, no request reaches it, and the user is told why. The same
    engine with its own certificate as the CA is reached (the control). A CA bundle named by
    REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE changes neither (it used to replace the engine's CA)."""
    server_cert, server_key = _self_signed(tmp_path, "engine")
    rogue_ca, _ = _self_signed(tmp_path, "rogue")
    client_cert, client_key = _self_signed(tmp_path, "client")
    engine = _TLSEngine(server_cert, server_key)
    try:
        runs = {}
        for name, ca in (("untrusted", rogue_ca), ("trusted", server_cert)):
            certs = tmp_path / name
            certs.mkdir()
            for source, target in ((ca, "ca.pem"), (client_cert, "cert.pem"), (client_key, "key.pem")):
                (certs / target).write_bytes(source.read_bytes())
            before = engine.requests
            # The environment's CA bundle trusts the other certificate each time: only the
            # engine's CA (DOCKER_CERT_PATH/ca.pem) may decide, as with the docker CLI.
            other = server_cert if name == "untrusted" else rogue_ca
            runs[name] = (cli(f"tcp://127.0.0.1:{engine.port}", "df", "--timeout", "5s",
                              env={"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(certs),
                                   "REQUESTS_CA_BUNDLE": str(other), "CURL_CA_BUNDLE": str(other)}),
                          engine.requests - before)
    finally:
        engine.close()

    untrusted, reached = runs["untrusted"]
    assert reached == 0, "a request went to an engine whose certificate was not verified"
    assert untrusted.returncode == 3, untrusted.stderr
    assert "certificate verify failed" in untrusted.stderr.lower() or "certificate" in untrusted.stderr.lower()
    assert "Traceback" not in untrusted.stderr
    trusted, reached = runs["trusted"]
    assert reached >= 1, trusted.stderr  # the handshake passed and sparkjoy spoke to it
    assert "certificate" not in trusted.stderr.lower()
