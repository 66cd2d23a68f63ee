"""The Docker SDK, imported only where it is used: engines reached over tcp://, ssh:// or
npipe:// (``transport.SdkTransport``), and the daemon's long-lived event stream.

The SDK imports paramiko, for ssh:// engines, whenever it is imported: a tenth of a second
for the many that never reach an engine over ssh. It uses paramiko only inside functions, so
this module makes the real import happen at the first ssh:// connection. (The standard
library's LazyLoader does not help: on Python 3.11 a second ``import`` of a lazy module reads
its ``__spec__``, which loads it.)
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


class _OnFirstUse(types.ModuleType):
    """Stands in ``sys.modules`` for a module until its first attribute is asked for, then
    imports it for real (which takes its place there) and answers from it."""

    def __getattr__(self, attribute: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attribute)


def _import_on_first_use(name: str) -> None:
    """Make ``import name`` cheap until the module is used, unless it is loaded already or not
    installed (then ``import name`` still fails at once)."""
    if name not in sys.modules and importlib.util.find_spec(name) is not None:
        sys.modules[name] = _OnFirstUse(name)


_import_on_first_use("paramiko")

import docker  # noqa: E402 (after paramiko is made cheap)


class APIClient(docker.APIClient):
    """The SDK's client, verifying a TLS engine against its own CA only.

    requests lets ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` in the environment replace a
    session's CA file on every request, so with either set (many machines set both, to the
    system bundle) the engine's certificate was checked against that bundle instead of
    ``DOCKER_CERT_PATH/ca.pem``: an engine with a private CA could not be reached, and any
    certificate the bundle trusts for that address was accepted. The docker CLI trusts the
    given CA alone; so does this.
    """

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # noqa: D401 (requests' API)
        if verify is None and isinstance(self.verify, str):
            verify = self.verify
        return super().merge_environment_settings(url, proxies, stream, verify, cert)


def client(base_url: str, tls: object | None, timeout: float, version: str) -> APIClient:
    """Given an address, its TLS settings, a timeout and an API version (never "auto": the
    engine negotiates it, once, for both transports), return the SDK's client for it. Makes
    no request."""
    api = APIClient(base_url=base_url, version=version, timeout=timeout, tls=tls or False,
                    use_ssh_client=_use_ssh_client(base_url))
    if base_url.startswith("unix://"):
        _reuse_unix_connections(api)
    return api


def _reuse_unix_connections(api: docker.APIClient) -> None:
    """Keep connections to a unix socket open across requests.

    The SDK's unix-socket adapter keys its connection pools by the whole request URL, so
    each distinct path opens a new connection, and past 25 paths closes an old one. Keyed by
    the socket alone, one pool serves every request. Proxy settings never apply to a unix
    socket, so requests' scan of the environment for them on every call is skipped too.
    """
    adapter = api.adapters.get("http+docker://")
    if adapter is None or not hasattr(adapter, "pools"):
        return
    get_connection = adapter.get_connection
    adapter.get_connection = lambda url, proxies=None: get_connection("http+docker://localhost", proxies)
    api.trust_env = False


def _use_ssh_client(base_url: str) -> bool:
    """ssh:// needs paramiko, an optional extra; without it use the system's ssh client."""
    if not base_url.startswith("ssh://"):
        return False
    try:
        import paramiko  # noqa: F401
    except ImportError:
        return True
    return False
