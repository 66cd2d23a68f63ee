"""Where the engine is: ``--host``, then ``DOCKER_HOST`` (with the TLS variables), then the current
docker context, then the default socket; the same order docker's own CLI uses."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from ..errors import ConfigError

DEFAULT_HOST = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class Connection:
    base_url: str
    source: str  # where the address came from, for error messages
    tls: object | None = None  # docker.tls.TLSConfig, or True for "TLS with system CAs"


def resolve(host_flag: str | None, environ: Mapping[str, str] | None = None) -> Connection:
    """Given ``--host`` (or None) and the environment, return where and how to connect."""
    import docker
    from docker.context import ContextAPI

    environ = os.environ if environ is None else environ
    try:
        tls_kwargs = docker.utils.kwargs_from_env(environment=dict(environ))
    except docker.errors.TLSParameterError as error:
        raise ConfigError(f"DOCKER_TLS_VERIFY/DOCKER_CERT_PATH: {error}") from error
    if host_flag:
        return Connection(host_flag, "--host", tls_kwargs.get("tls"))
    if environ.get("DOCKER_HOST"):
        return Connection(tls_kwargs.get("base_url", environ["DOCKER_HOST"]), "DOCKER_HOST", tls_kwargs.get("tls"))
    context_name = environ.get("DOCKER_CONTEXT")
    try:
        context = ContextAPI.get_context(context_name) if context_name else ContextAPI.get_current_context()
    except Exception as error:  # the SDK raises several types for a broken config
        raise ConfigError(f"docker context {context_name or '(current)'}: {error}") from error
    if context is None:
        raise ConfigError(f"DOCKER_CONTEXT={context_name}: no such docker context (see `docker context ls`)")
    if context.Host and context.name != "default":
        tls = context.TLSConfig if getattr(context, "TLSConfig", None) else None
        return Connection(context.Host, f"docker context {context.name}", tls)
    return Connection(DEFAULT_HOST, "default socket")
