"""The long-running service: triggers, the supervisor loop, state, and health and metrics.

``metrics`` (the Prometheus registry) and ``http`` (``/healthz``, ``/readyz``, ``/metrics``
and the build-notification endpoints) are leaves: they know nothing of the loop, which
calls into them. ``triggers`` (when to prune) and ``watermarks`` (what to evict under disk
pressure) are pure; ``events`` learns from the engine's event stream; ``supervisor`` is the
loop; ``client`` is the library API for dev tools::

    from sparkjoy.daemon import Client

    with Client().build("myapp"):
        ...  # run the build; the daemon does not prune meanwhile
"""


from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING

if _TYPE_CHECKING:
    from .client import Client, DaemonRefused, DaemonUnavailable

__all__ = ["Client", "DaemonRefused", "DaemonUnavailable"]


def __getattr__(name: str) -> object:
    # Imported on first use: every command loads ``daemon.settings`` (the [daemon] keys of a
    # shared config file), which must not pull in the client, the HTTP server and the metrics.
    if name in __all__:
        return getattr(_importlib.import_module(".client", __name__), name)
    if name == "client":  # reachable as an attribute, as when this package imported it
        return _importlib.import_module(".client", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
