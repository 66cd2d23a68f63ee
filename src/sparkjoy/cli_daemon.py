"""Command-line commands of the long-running service (`sparkjoy run`, `sparkjoy build`, `sparkjoy notify`).

Registered on ``cli.main`` when ``cli`` is imported (``cli`` imports this module at its end,
after ``main`` and the option decorators exist).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from typing import Any

import click

from . import config
from .cli import CONTEXT, FLAG_KEYS, _fail, _flag_names, _flags, engine_options, main, policy_options
from .daemon import settings as daemon_settings
from .errors import ConfigError, ExitCode, SparkjoyError

DAEMON_FLAGS = {
    "interval": "daemon.interval", "num_builds": "daemon.num_builds",
    "high_watermark": "daemon.high_watermark", "low_watermark": "daemon.low_watermark",
    "data_root": "daemon.data_root", "state_db": "daemon.state_db",
    "build_wait_limit": "daemon.build_wait_limit", "quiet_period": "daemon.quiet_period",
    "listen": "daemon.listen", "log_format": "daemon.log_format", "disable": "daemon.disable",
    "scope_from_builds": "daemon.scope_from_builds", "audit": "daemon.audit",
}


def _daemon_flags(params: dict[str, Any]) -> dict[str, Any]:
    flags = _flags(params)
    for name, dotted in DAEMON_FLAGS.items():
        if params.get(name) is not None:
            flags[dotted] = params[name]
    return flags


@main.command("run", context_settings=CONTEXT)
@engine_options
@policy_options
@click.option("--interval", help="Prune this often, from the last prune (default 1h). Not with --num-builds.")
@click.option("--num-builds", type=int, help="Prune every N builds the engine reports, instead of on an interval.")
@click.option("--high-watermark", help="Evict least recently used images and build cache when usage passes this: "
              "a percentage of the data root's filesystem (85%) or bytes of Docker usage (20GB); "
              "a number without its unit is refused.")
@click.option("--low-watermark", help="Evict until usage is under this (same kind as --high-watermark).")
@click.option("--data-root", help="Where the engine's data root is visible here, for percentage marks.")
@click.option("--state-db", help="The state database (default $XDG_STATE_HOME/sparkjoy/state.db, "
              "/var/lib/sparkjoy/state.db as root).")
@click.option("--build-wait-limit", help="Longest a due prune waits for builds in progress (default 30m).")
@click.option("--quiet-period", help="The first prune after start, once due, waits for a build, or this long "
              "without one (default 2m).")
@click.option("--listen", help="HOST:PORT of /healthz, /readyz, /metrics and the build notifications "
              "(default 127.0.0.1:9867; \"off\" to disable).")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Log as plain text or JSON lines.")
@click.option("--disable/--enable", "disable", default=None, help="Record last use but never prune.")
@click.option("--scope-from-builds", is_flag=True, default=None,
              help="Prune only repositories that dev tools claim in build notifications (--repo of `sparkjoy build`).")
@click.option("--audit", is_flag=True, default=None,
              help="After each prune, check every kept image (with its tags), build-cache record and "
              "volume is still there; a finding fails the run.")
@click.option("-v", "--verbose", is_flag=True, help="Log every decision and deleted object (debug level).")
def run_command(**params: Any) -> None:
    """Run the pruner as a service: prune at the right moments, never while a build runs.

    When: every --interval or every --num-builds builds, counted from the last prune (a restart
    does not reset that); the first after start waits for a build to finish (or a quiet period);
    at once when asked (POST /prune, SIGUSR1, `sparkjoy notify prune`);
    and under disk pressure (--high-watermark) it evicts least recently used images and build
    cache until usage is under --low-watermark.

    It remembers when each image was last used (from the engine's events) in a state database,
    so age counts from the last tag or last use, across restarts. SIGTERM finishes the deletions
    in progress, saves and exits 0.
    """
    from .daemon.supervisor import Supervisor, configure_logging

    try:
        if params.get("as_of"):
            raise ConfigError("--as-of applies to one-shot commands (df, prune), not to `run`")
        settings = config.load(_daemon_flags(params), params.get("config_path"),
                               flag_names=_flag_names({**FLAG_KEYS, **DAEMON_FLAGS}),
                               checks=(daemon_settings.contradictions,))
        daemon = daemon_settings.DaemonSettings.from_settings(settings)
        configure_logging(daemon.log_format, logging.DEBUG if params["verbose"] else logging.INFO)
        supervisor = Supervisor(settings, daemon)
    except SparkjoyError as error:
        _fail(error)
        return

    def stop(signum: int, frame: Any) -> None:
        logging.getLogger("sparkjoy.daemon").info("%s received: finishing the deletion in progress, then exiting",
                                                  signal.Signals(signum).name)
        supervisor.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, lambda signum, frame: supervisor.request_prune())
    try:
        code = supervisor.run()
    except SparkjoyError as error:
        _fail(error)
        return
    sys.exit(code)


def _client(params: dict[str, Any]):
    from .daemon.client import Client

    return Client.from_config(params.get("config_path"), params.get("listen"))


def _client_options(fn):
    fn = click.option("--listen", help="The daemon's HOST:PORT (default: [daemon] listen, 127.0.0.1:9867).")(fn)
    fn = click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")(fn)
    return fn


@main.command("build", context_settings={**CONTEXT, "ignore_unknown_options": True,
                                         "allow_interspersed_args": False})
@_client_options
@click.option("--id", "build_id", help="A name for the build, shown in the daemon's log.")
@click.option("--repo", "repos", multiple=True, metavar="NAME",
              help="A repository (or glob) this build makes; a daemon with scope_from_builds prunes only "
              "claimed ones (repeatable).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def build_command(command: tuple[str, ...], **params: Any) -> None:
    """Run COMMAND as a build: the daemon does not prune while it runs.

    \b
    sparkjoy build -- docker build -t myapp .
    sparkjoy build --id nightly -- make images

    Tells the running daemon the build starts, runs COMMAND (no shell), tells it the build
    finished, and exits with COMMAND's exit code. Without a daemon it warns and runs COMMAND.
    """
    from .daemon.client import DaemonUnavailable

    build_id = None
    client = None
    try:
        client = _client(params)
        build_id = client.build_started(params.get("build_id"), params.get("repos") or ())
    except (ConfigError, DaemonUnavailable) as error:
        # A build never fails because of the pruner: say why it is not announced, and build.
        click.echo(f"sparkjoy: warning: {error}; running the build anyway", err=True)

    try:
        process = subprocess.Popen(list(command))
    except OSError as error:
        click.echo(f"sparkjoy: error: cannot run {command[0]}: {error.strerror or error}", err=True)
        code = 127 if isinstance(error, FileNotFoundError) else 126
        _finish(client, build_id)
        sys.exit(code)

    def forward(signum: int, frame: Any) -> None:
        process.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        code = process.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _finish(client, build_id)
    sys.exit(code if code >= 0 else 128 - code)


def _finish(client: Any, build_id: str | None) -> None:
    from .daemon.client import DaemonUnavailable

    if client is None or not build_id:
        return
    try:
        client.build_finished(build_id)
    except DaemonUnavailable as error:
        click.echo(f"sparkjoy: warning: {error}", err=True)


@main.command("notify", context_settings=CONTEXT)
@_client_options
@click.argument("what", type=click.Choice(["prune", "build-start", "build-finish"]))
@click.argument("build_id", required=False)
def notify_command(what: str, build_id: str | None, **params: Any) -> None:
    """Tell the running daemon something: prune now, or a build starts / finished.

    \b
    sparkjoy notify prune                 prune as soon as no build is in progress
    sparkjoy notify build-start ci-42     a build starts (prints its id)
    sparkjoy notify build-finish ci-42    ... and finished

    Exit codes: 0 the daemon took it, 1 the daemon refused it (a build id it does not know,
    pruning disabled), 2 usage or config error, 3 no daemon answers at its address (not
    running, or listening elsewhere: see --listen / SPARKJOY_DAEMON_LISTEN).
    """
    from .daemon.client import DaemonRefused, DaemonUnavailable

    try:
        client = _client(params)
        if what == "prune":
            client.prune_now()
            click.echo("prune asked for")
        elif what == "build-start":
            click.echo(client.build_started(build_id))
        else:
            if not build_id:
                raise click.UsageError("build-finish needs the build's id")
            client.build_finished(build_id)
    except ConfigError as error:
        _fail(error)
    except DaemonRefused as error:
        click.echo(f"sparkjoy: error: {error}", err=True)
        sys.exit(int(ExitCode.FAILED))
    except DaemonUnavailable as error:
        click.echo(f"sparkjoy: error: {error}", err=True)
        sys.exit(int(ExitCode.UNREACHABLE))
