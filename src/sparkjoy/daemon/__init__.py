"""The long-running service: triggers, the supervisor loop, state, and health and metrics.

``metrics`` (the Prometheus registry) and ``http`` (``/healthz``, ``/readyz``, ``/metrics``
and the build-notification endpoints) are leaves: they know nothing of the loop, which
calls into them.
"""
