"""Where the engine is: ``--host``, then ``DOCKER_HOST`` (with the TLS variables), then the current
docker context, then the default socket; the same order docker's own CLI uses."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..errors import ConfigError

DEFAULT_HOST = "unix:///var/run/docker.sock"

log = logging.getLogger("sparkjoy.engine")


@dataclass(frozen=True)
class Connection:
    base_url: str
    source: str  # where the address came from, for error messages
    tls: object | None = None  # docker.tls.TLSConfig, or True for "TLS with system CAs"


def resolve(host_flag: str | None, environ: Mapping[str, str] | None = None) -> Connection:
    """Given ``--host`` (or None) and the environment, return where and how to connect.

    A tcp:// engine reached without TLS, or with TLS that does not verify the engine's
    certificate, is logged as a warning (stderr for the command line): whoever controls the
    engine controls the host, so reaching an impostor is as bad as being one.
    """
    connection = _resolve(host_flag, environ)
    problem = insecure_transport(connection)
    if problem:
        log.warning("sparkjoy: warning: %s", problem)
    return connection


def insecure_transport(connection: Connection) -> str | None:
    """Given a connection, say why its transport lets others read or pose as the engine, or None.

    Verification is on when DOCKER_TLS_VERIFY is set (any value but empty) with certificates
    in DOCKER_CERT_PATH, or when a context has TLS material and no SkipTLSVerify. Leaving
    DOCKER_TLS_VERIFY unset with DOCKER_CERT_PATH set, or SkipTLSVerify in a context, is the
    explicit opt-out; it still warns.
    """
    url = connection.base_url
    scheme = url.partition("://")[0].lower() if "://" in url else "tcp"  # the SDK reads HOST:PORT as tcp://
    if scheme not in ("tcp", "http", "https"):
        return None  # unix://, ssh://, npipe://: the OS or ssh authenticates both ends
    tls = connection.tls
    if not tls and scheme != "https":
        return (
            f"the engine at {url} is reached over plain TCP: nothing is encrypted and nobody is "
            "authenticated, so anyone who can reach that port controls the engine and the host. "
            "Use TLS (DOCKER_TLS_VERIFY=1 with DOCKER_CERT_PATH) or ssh://."
        )
    if tls is not None and tls is not True and getattr(tls, "verify", True) is False:
        why = ("the context sets SkipTLSVerify" if connection.source.startswith("docker context")
               else "DOCKER_TLS_VERIFY is not set")
        return (
            f"TLS to the engine at {url} does not verify its certificate ({why}): anyone on the path "
            "can pose as the engine. Set DOCKER_TLS_VERIFY=1 to verify."
        )
    return None


# unix:///PATH with nothing urlparse would read as parameters, a query or a fragment.
_PLAIN_SOCKET = re.compile(r"unix:///[^?#;]*")

ADDRESS_FORMS = ("unix:///path/to/docker.sock, tcp://HOST:PORT, ssh://[USER@]HOST[:PORT], http://HOST:PORT, "
                 "https://HOST:PORT, npipe:////./pipe/NAME (Windows) or a bare IP:PORT (read as tcp://)")


def address_problem(address: object) -> str | None:
    """Given an engine address, say what is wrong with its form, or None when the SDK takes it.

    Only the form: whether anything answers there is found out by connecting.
    """
    if not isinstance(address, str) or not address.strip():
        return "the address is empty"
    text = address.strip()
    if _PLAIN_SOCKET.fullmatch(text):
        return None  # what the SDK takes, told without importing it (a tenth of a second)

    import docker.errors
    import docker.utils
    from docker.constants import IS_WINDOWS_PLATFORM

    try:
        docker.utils.parse_host(text, IS_WINDOWS_PLATFORM)
    except docker.errors.DockerException as error:
        # The SDK's words, without the address it repeats: "Invalid bind address format: port is required".
        detail = str(error).removesuffix(f": {text}")
        scheme, sep, _ = text.partition("://")
        if not sep:
            host, colon, port = text.rpartition(":")
            return f"no scheme: did you mean tcp://{text}?" if colon and host and port.isdigit() else (
                "no scheme such as unix:// or tcp://")
        if detail == "Invalid bind address protocol":
            return f"unknown scheme {scheme}://"
        if detail.endswith("port is required"):
            return f"{scheme}:// needs a port ({scheme}://HOST:PORT)"
        if "no path allowed" in detail:
            return f"{scheme}:// takes no path"
        if detail.startswith("fd protocol"):
            return "fd:// is not supported"
        if detail == "Invalid bind address format":
            return "malformed (no host, or a query, fragment, parameters or password, which are not allowed)"
        return detail
    return None


def _checked(address: str, source: str) -> str:
    """Given an address and where it came from, return it, or raise ConfigError (exit 2) naming both."""
    problem = address_problem(address)
    if problem:
        raise ConfigError(f"{source}: {address!r} is not an engine address ({problem}). Use {ADDRESS_FORMS}.")
    return address


def _resolve(host_flag: str | None, environ: Mapping[str, str] | None = None) -> Connection:
    environ = os.environ if environ is None else environ
    tls_kwargs = _tls_from_env(environ)
    if host_flag:
        return Connection(_checked(host_flag, "--host"), "--host", tls_kwargs.get("tls"))
    if environ.get("DOCKER_HOST"):
        host = _checked(tls_kwargs.get("base_url", environ["DOCKER_HOST"]), "DOCKER_HOST")
        return Connection(host, "DOCKER_HOST", tls_kwargs.get("tls"))
    name, named_by = _current_context_name(environ)
    if name != "default":
        host, tls = _load_context(name, named_by, environ)
        if host:
            return Connection(host, f"docker context {name}", tls)
    return Connection(DEFAULT_HOST, "default socket")


def _tls_from_env(environ: Mapping[str, str]) -> dict:
    """The SDK's reading of DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH. Without
    either TLS variable it reads DOCKER_HOST alone, so the SDK is imported only with them."""
    if not (environ.get("DOCKER_CERT_PATH") or environ.get("DOCKER_TLS_VERIFY")):
        return {"base_url": environ["DOCKER_HOST"]} if environ.get("DOCKER_HOST") else {}
    import docker.errors
    import docker.utils

    try:
        return docker.utils.kwargs_from_env(environment=dict(environ))
    except docker.errors.TLSParameterError as error:
        raise ConfigError(f"DOCKER_TLS_VERIFY/DOCKER_CERT_PATH: {error}") from error


# Contexts are read here rather than through the SDK's ContextAPI, which looks for them only
# next to an existing config.json (`docker context create` makes none) and reads os.environ
# instead of the environment it is given.


def _docker_config_dir(environ: Mapping[str, str]) -> Path:
    if environ.get("DOCKER_CONFIG"):
        return Path(environ["DOCKER_CONFIG"])
    home = environ.get("HOME")
    return (Path(home) if home else Path.home()) / ".docker"


def _current_context_name(environ: Mapping[str, str]) -> tuple[str, str]:
    """The docker CLI's choice: DOCKER_CONTEXT, else config.json's currentContext, else "default"."""
    if environ.get("DOCKER_CONTEXT"):
        return environ["DOCKER_CONTEXT"], f"DOCKER_CONTEXT={environ['DOCKER_CONTEXT']}"
    config = _docker_config_dir(environ) / "config.json"
    try:
        data = json.loads(config.read_text())
    except FileNotFoundError:
        return "default", ""
    except (OSError, ValueError) as error:
        raise ConfigError(f"{config}: cannot read the docker config file: {error}") from error
    name = data.get("currentContext") if isinstance(data, dict) else None
    return (name, f"currentContext in {config}") if isinstance(name, str) and name else ("default", "")


def _load_context(name: str, named_by: str, environ: Mapping[str, str]) -> tuple[str | None, object | None]:
    """Given a context name, return its docker endpoint's host and TLS settings (or None)."""
    import docker.tls

    contexts = _docker_config_dir(environ) / "contexts"
    context_id = hashlib.sha256(name.encode()).hexdigest()
    meta = contexts / "meta" / context_id / "meta.json"
    try:
        data = json.loads(meta.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{named_by}: no docker context named {name!r} in {contexts} (see `docker context ls`)"
        ) from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"docker context {name!r}: cannot read {meta}: {error}") from error
    endpoint = (data.get("Endpoints") or {}).get("docker") if isinstance(data, dict) else None
    if not isinstance(endpoint, dict):
        return None, None
    host = endpoint.get("Host") if isinstance(endpoint.get("Host"), str) else None
    if host:
        _checked(host, f"docker context {name} (its docker endpoint's Host in {meta})")
    tls_dir = contexts / "tls" / context_id / "docker"
    ca, cert, key = (tls_dir / "ca.pem", tls_dir / "cert.pem", tls_dir / "key.pem")
    tls = None
    if ca.is_file() or cert.is_file():
        tls = docker.tls.TLSConfig(
            client_cert=(str(cert), str(key)) if cert.is_file() and key.is_file() else None,
            ca_cert=str(ca) if ca.is_file() else None,
            verify=not endpoint.get("SkipTLSVerify", False),
        )
    elif host and host.startswith("tcp://") and endpoint.get("SkipTLSVerify"):
        tls = docker.tls.TLSConfig(verify=False)
    return host, tls
