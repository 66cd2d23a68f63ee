"""Where sparkjoy looks for the engine, without an engine: flags, variables, docker contexts.

Contexts are laid out as the docker CLI writes them (`docker context create`):
$DOCKER_CONFIG (or ~/.docker)/contexts/meta/<sha256 of name>/meta.json and
contexts/tls/<sha256 of name>/docker/{ca,cert,key}.pem; config.json's currentContext picks one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from sparkjoy.engine.connect import DEFAULT_HOST, address_problem, insecure_transport, resolve
from sparkjoy.errors import ConfigError, ExitCode


def write_context(config_dir: Path, name: str, host: str, *, tls: bool = False, skip_verify: bool = False) -> None:
    context_id = hashlib.sha256(name.encode()).hexdigest()
    meta = config_dir / "contexts" / "meta" / context_id
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({
        "Name": name, "Metadata": {}, "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": skip_verify}}}))
    if tls:
        tls_dir = config_dir / "contexts" / "tls" / context_id / "docker"
        tls_dir.mkdir(parents=True)
        for pem in ("ca.pem", "cert.pem", "key.pem"):
            (tls_dir / pem).write_text("not a real certificate")


def test_flag_then_docker_host_then_context_then_default(tmp_path: Path) -> None:
    write_context(tmp_path, "ctx", "unix:///ctx.sock")
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "ctx"}))
    environ = {"DOCKER_CONFIG": str(tmp_path), "DOCKER_HOST": "unix:///env.sock"}
    assert resolve("unix:///flag.sock", environ).base_url == "unix:///flag.sock"
    assert resolve(None, environ).source == "DOCKER_HOST"
    del environ["DOCKER_HOST"]
    connection = resolve(None, environ)
    assert (connection.base_url, connection.source) == ("unix:///ctx.sock", "docker context ctx")
    (tmp_path / "config.json").write_text("{}")
    assert resolve(None, environ).base_url == DEFAULT_HOST


def test_docker_context_variable_wins_over_config_json_and_needs_no_config_json(tmp_path: Path) -> None:
    write_context(tmp_path, "a", "unix:///a.sock")
    write_context(tmp_path, "b", "unix:///b.sock")
    assert resolve(None, {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "b"}).base_url == "unix:///b.sock"
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "a"}))
    assert resolve(None, {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "b"}).base_url == "unix:///b.sock"
    assert resolve(None, {"DOCKER_CONFIG": str(tmp_path)}).base_url == "unix:///a.sock"


def test_contexts_live_in_home_without_docker_config(tmp_path: Path) -> None:
    write_context(tmp_path / ".docker", "h", "unix:///home.sock")
    assert resolve(None, {"HOME": str(tmp_path), "DOCKER_CONTEXT": "h"}).base_url == "unix:///home.sock"


def test_a_context_with_tls_material_connects_with_it(tmp_path: Path) -> None:
    write_context(tmp_path, "remote", "tcp://remote:2376", tls=True)
    connection = resolve(None, {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "remote"})
    assert connection.base_url == "tcp://remote:2376"
    assert connection.tls.cert == (str(tmp_path / "contexts/tls" / hashlib.sha256(b"remote").hexdigest()
                                       / "docker/cert.pem"),
                                   str(tmp_path / "contexts/tls" / hashlib.sha256(b"remote").hexdigest()
                                       / "docker/key.pem"))
    assert connection.tls.verify is True and connection.tls.ca_cert.endswith("ca.pem")


def test_unknown_context_and_broken_config_json_are_config_errors_naming_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nosuch"):
        resolve(None, {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "nosuch"})
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        resolve(None, {"DOCKER_CONFIG": str(tmp_path)})


@pytest.mark.parametrize("address", ["203.0.113.7:2375", "docker-host.example:2375", ":2375"])
def test_a_bare_address_is_plain_tcp_and_warned_about(address: str, tmp_path: Path) -> None:
    """The SDK reads a DOCKER_HOST without a scheme as tcp://: it is warned about like tcp://."""
    connection = resolve(None, {"DOCKER_CONFIG": str(tmp_path), "DOCKER_HOST": address})
    assert connection.base_url == address
    assert "plain TCP" in (insecure_transport(connection) or "")


# -- the address's form is checked where it is resolved: a bad one is a usage error ------------------


@pytest.mark.parametrize("address", [
    "unix:///var/run/docker.sock", "unix://relative.sock", "tcp://10.0.0.1:2376", "tcp://[::1]:2375",
    "ssh://builder@10.0.0.1", "ssh://10.0.0.1:2222", "http://10.0.0.1:2375", "https://10.0.0.1:2376",
    "npipe:////./pipe/docker_engine", "127.0.0.1:2375",
])
def test_every_form_of_address_the_sdk_takes_is_accepted(address: str, tmp_path: Path) -> None:
    assert resolve(address, {"DOCKER_CONFIG": str(tmp_path)}).base_url == address
    assert resolve(None, {"DOCKER_CONFIG": str(tmp_path), "DOCKER_HOST": address}).base_url == address
    assert address_problem(address) is None


@pytest.mark.parametrize(("address", "why"), [
    ("bogus://x", "unknown scheme bogus://"),
    ("garbage", "no scheme"),
    ("localhost:2375", "did you mean tcp://localhost:2375?"),
    ("tcp://10.0.0.1", "port"),
    ("tcp://", ""),
    ("ssh://h/path", "no path"),
    ("tcp://h:2375?x=1", ""),
    ("fd://", "fd://"),
])
def test_a_malformed_address_is_a_config_error_naming_where_it_came_from(address: str, why: str,
                                                                         tmp_path: Path) -> None:
    for host_flag, environ, source in (
        (address, {}, "--host"),
        (None, {"DOCKER_HOST": address}, "DOCKER_HOST"),
    ):
        with pytest.raises(ConfigError) as caught:
            resolve(host_flag, {"DOCKER_CONFIG": str(tmp_path), **environ})
        message = str(caught.value)
        assert caught.value.exit_code is ExitCode.USAGE
        assert message.startswith(f"{source}: "), message
        assert repr(address) in message and why in message, message
        for form in ("unix://", "tcp://", "ssh://", "https://", "npipe://"):
            assert form in message, message
    assert why in (address_problem(address) or "")


def test_a_malformed_address_in_a_context_names_the_context(tmp_path: Path) -> None:
    write_context(tmp_path, "broken", "bogus://x")
    with pytest.raises(ConfigError, match="docker context broken.*unknown scheme bogus://"):
        resolve(None, {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "broken"})
