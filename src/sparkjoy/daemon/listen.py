"""Where the daemon's HTTP side listens: the default address and ``HOST:PORT`` parsing.

A leaf with no imports beyond the errors, so the daemon's settings (which every command
loads, to know the ``[daemon]`` keys of a shared config file) need not import the HTTP
server and the metrics with it.
"""

from __future__ import annotations

from ..errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9867
DEFAULT_LISTEN = f"{DEFAULT_HOST}:{DEFAULT_PORT}"


def parse_listen(value: str) -> tuple[str, int]:
    """Given ``HOST:PORT`` (``[::1]:PORT`` for IPv6, ``:PORT`` for the default host), return both.

    >>> parse_listen("0.0.0.0:9867")
    ('0.0.0.0', 9867)
    >>> parse_listen("[::1]:9000")
    ('::1', 9000)
    >>> parse_listen(":9000")
    ('127.0.0.1', 9000)
    """
    text = value.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ConfigError(f"--listen {value!r}: expected [IPV6]:PORT, e.g. [::1]:{DEFAULT_PORT}")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or ":" in host:
            raise ConfigError(f"--listen {value!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--listen {value!r}: the port must be a number from 0 to 65535")
    return host or DEFAULT_HOST, int(port_text)
