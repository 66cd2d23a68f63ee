"""The command line: the only module that prints or exits.

Exit codes (see ``errors.ExitCode``): 0 success (nothing to prune included), 1 failure or
partial failure, 2 usage or config error, 3 engine unreachable, 4 aborted (declined, or no
terminal to confirm on without -f).
"""

from __future__ import annotations

import os
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import click

from . import __version__, config, report, state, usage
from .engine.docker_engine import DockerEngine
from .errors import ExitCode, SparkjoyError
from .executor import Executor, ObjectResult, RunResult, ranks_changed
from .model import Kind, Snapshot
from .policy import Policy
from .planner import EMPTY_MEMORY, Plan, plan as make_plan


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time such as 2026-12-04T09:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def engine_options(fn: Callable) -> Callable:
    fn = click.option("-H", "--host", help="Engine address (unix://, tcp://, ssh://). Default: DOCKER_HOST, "
                      "the current docker context, then unix:///var/run/docker.sock.")(fn)
    fn = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                      help="TOML config file. Default: $SPARKJOY_CONFIG, ~/.config/sparkjoy/config.toml, "
                      "/etc/sparkjoy/config.toml.")(fn)
    fn = click.option("--timeout", help="Longest wait for one engine call, e.g. 10m (default 10m).")(fn)
    return fn


def state_db_option(fn: Callable) -> Callable:
    """--state-db, as `sparkjoy run` has it: a prune by hand plans from the daemon's memory."""
    return click.option("--state-db", help="The state database: last use, first sightings, remembered "
                        "inspects (default [daemon] state_db, else $XDG_STATE_HOME/sparkjoy/state.db, "
                        "/var/lib/sparkjoy/state.db as root).")(fn)


def _no_filter(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> None:
    if values:
        raise click.UsageError(
            f"sparkjoy has no --filter ({values[0]}): for docker's until=D use --max-age D (sparkjoy counts "
            "from an image's last tag or use, not its creation); for label=K=V use --label K=V; "
            "untagged images are always candidates, so dangling=... needs nothing.", ctx=ctx)


def policy_options(fn: Callable) -> Callable:
    options = [
        click.option("--max-age", help="Old means last tagged/used longer ago than this (default 6h; negative: "
                     "everything with an age is old; an image with no time ages from a real prune's first sight)."),
        click.option("--keep-recent", type=int, help="Keep the N newest old images per repository (default 2)."),
        click.option("--label", "labels", multiple=True, metavar="KEY[=VALUE]",
                     help="Scope: only objects with this label (repeatable; all must match)."),
        click.option("--repo", "repos", multiple=True, metavar="GLOB",
                     help="Scope: only images whose repository (a tag without its :TAG) matches (repeatable). "
                     "Untagged images belong to no repository, so they stay."),
        click.option("--exclude", multiple=True, metavar="GLOB",
                     help="Protect images with a repo:tag matching this glob, e.g. 'redis:*' (repeatable)."),
        click.option("--containers/--no-containers", default=None, help="Prune stopped containers (default on)."),
        click.option("--images/--no-images", default=None, help="Prune images (default on)."),
        click.option("--build-cache/--no-build-cache", default=None, help="Prune build cache (default on)."),
        click.option("--volumes", is_flag=False, flag_value="anonymous", default=None,
                     type=click.Choice(["none", "anonymous", "all"]),
                     help="Prune unused volumes: --volumes for anonymous ones, --volumes=all for named too."),
        click.option("--as-of", callback=lambda ctx, param, value: _parse_time(value),
                     help="Judge ages as of this time (ISO 8601) instead of now, e.g. to preview."),
        # docker's habit: refused with the flag that says it here.
        click.option("--filter", multiple=True, hidden=True, expose_value=False, callback=_no_filter),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


# click's parameter name -> the setting's dotted key
FLAG_KEYS = {
    "max_age": "max_age", "keep_recent": "keep_recent", "labels": "labels", "repos": "repos",
    "exclude": "exclude", "containers": "containers", "images": "images", "build_cache": "build_cache",
    "volumes": "volumes", "host": "engine.host", "timeout": "engine.timeout", "state_db": "daemon.state_db",
}


def _flags(params: dict[str, Any], mapping: dict[str, str] = FLAG_KEYS) -> dict[str, Any]:
    """Given click's parameters, return the settings the user actually gave, by dotted key."""
    flags = {}
    for name, dotted in mapping.items():
        value = params.get(name)
        if value is None or value == ():
            continue
        flags[dotted] = list(value) if isinstance(value, tuple) else value
    return flags


def _flag_names(mapping: dict[str, str] = FLAG_KEYS) -> dict[str, str]:
    """The current command's options by dotted key, as the user types them: ``labels`` is
    ``--label``, ``engine.host`` is ``--host``."""
    context = click.get_current_context(silent=True)
    if context is None:
        return {}
    names = {}
    for param in context.command.params:
        if isinstance(param, click.Option) and param.name in mapping:
            long = [opt for opt in param.opts if opt.startswith("--")]
            names[mapping[param.name]] = (long or param.opts)[0]
    return names


def _fail(error: SparkjoyError) -> None:
    # The message may quote the engine, which may quote anything: print it escaped.
    click.echo(f"sparkjoy: error: {report.printable(str(error), newlines=True)}", err=True)
    sys.exit(int(error.exit_code))


def _load(params: dict[str, Any], checks: tuple = ()) -> config.Settings:
    return config.load(_flags(params), params.get("config_path"), flag_names=_flag_names(), checks=checks)


def _state_path(settings: config.Settings) -> Path:
    configured = settings.values.get("daemon.state_db")
    return Path(configured) if configured else state.default_path()


def _remember_after_prune(settings: config.Settings, engine: DockerEngine, plan: Plan,
                          result: RunResult | None = None) -> None:
    """After a real prune, record images seen for the first time, so an image with no usable
    timestamp can age from today on (it is kept until then), and the images deleted whose layers
    build cache still holds, so a later scoped prune knows whose cache it is (``CacheOwner``).
    Recorded after planning, so this run's plan is the one its dry run showed."""
    remembered = state.State.open(_state_path(settings), engine.host)
    try:
        remembered.ensure_seen([image.id for image in plan.snapshot.images], plan.snapshot.taken_at)
        if result is not None:
            remembered.remember_left_behind(plan, result.deleted_ids(Kind.IMAGE), datetime.now(timezone.utc))
    finally:
        remembered.close()


def _snapshot_and_plan(settings: config.Settings, as_of: datetime | None, real_prune: bool = False,
                       reuse_inspects: bool = True) -> tuple[DockerEngine, Plan]:
    """Read the engine and plan, with what the state database remembers: last use and first
    sightings (read only: a dry run and the real run that follows plan from the same memory),
    and the image histories earlier runs read (they never change for an image ID; this run's
    are saved, so a second run asks the engine for new images' histories only), and the image
    inspects, which a second run asks again only for the images the engine's events since
    the first say changed (see DockerEngine.know_inspects). For a real prune, a plan made from
    remembered inspects is used only when the images whose keep-recent places decide others'
    deletion still read the same afresh (executor.ranks_changed); otherwise every image is
    inspected again and the plan made anew. Both caches are best effort: a database that cannot
    be used costs only the calls it would save, and says so only when there was a database to use."""
    engine = DockerEngine.connect(settings.host, timeout=settings.timeout, remember_inspects=True)
    engine.begin_snapshot()  # the engine's slowest answer, asked for while the state is read
    path = _state_path(settings)
    existed = path.is_file()
    remembered = state.State.open(path, engine.host, quiet=not existed)
    try:
        memory = remembered.memory() if existed else EMPTY_MEMORY
        engine.know_histories(remembered.histories())
        engine.know_inspects(*(remembered.inspects() if reuse_inspects else ({}, None)))
        snapshot = engine.snapshot()
        if remembered.persistent:
            remembered.save_histories(engine.histories_of(snapshot))
            remembered.save_inspects(*engine.remembered_inspects(snapshot))
    finally:
        remembered.close()
    now = as_of or snapshot.taken_at  # --as-of, parsed by click before anything connects
    the_plan = make_plan(snapshot, settings.policy, memory, now=now)
    if real_prune and reuse_inspects and ranks_changed(engine, the_plan):
        # An image holding a keep-recent place reads otherwise afresh: inspect everything again.
        return _snapshot_and_plan(settings, as_of, real_prune, reuse_inspects=False)
    _warn_unmatched_globs(settings.policy, snapshot)
    return engine, the_plan


def _warn_unmatched_globs(policy: Policy, snapshot: Snapshot) -> None:
    """A --repo glob matching no repository scopes the run to nothing, and an --exclude glob
    matching no image protects nothing: say so (on stderr, so JSON on stdout stays whole), with
    some of the repositories there are."""
    repositories = sorted({r for image in snapshot.images for r in image.repositories})
    some = ", ".join(repositories[:5]) + (", ..." if len(repositories) > 5 else "") or "none: no image is tagged"
    for glob in policy.unmatched_repos(repositories):
        click.echo(report.printable(f"sparkjoy: warning: --repo {glob} (or the repos setting) matches no "
                                    f"repository on this engine (a repository is a tag without its :TAG; "
                                    f"here: {some})"), err=True)
    if policy.exclude:
        names = [name for image in snapshot.images for name in (*image.repo_tags, *image.repo_digests)]
        for glob in policy.unmatched_excludes(names):
            click.echo(report.printable(f"sparkjoy: warning: --exclude {glob} (or the exclude setting) matches "
                                        f"no image on this engine, so it protects nothing here (it is matched "
                                        f"against REPO:TAG; repositories here: {some})"), err=True)


# The commands of the long-running service live in cli_daemon, which registers them on
# `main`. Loaded only when one of them is asked for or the commands are listed (--help): with
# the daemon's HTTP server and metrics it is a fifth of every other command's start-up.
_DAEMON_COMMANDS = ("run", "build", "notify")


class _Commands(click.Group):
    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _DAEMON_COMMANDS and cmd_name not in self.commands:
            from . import cli_daemon  # noqa: F401 (registers its commands on main)
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        from . import cli_daemon  # noqa: F401

        return super().list_commands(ctx)


@click.group(cls=_Commands, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="sparkjoy")
def main() -> None:
    """Keep a Docker host's disk from filling up.

    \b
    sparkjoy df               where did the space go?
    sparkjoy prune --dry-run  what would a prune remove, and why?
    sparkjoy prune            remove it (asks first; -f to skip the question)

    Exit codes: 0 success, 1 failure or partial failure, 2 usage or config error,
    3 engine unreachable, 4 aborted at the confirmation.
    """


@main.command(context_settings=CONTEXT)
@engine_options
@policy_options
@state_db_option
@click.option("-v", "--verbose", is_flag=True, help="List every object, not just the largest.")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table",
              help="Output format.")
def df(**params: Any) -> None:
    """Show where the disk went: images, build cache, containers and volumes.

    Bytes are counted once however many images share a layer; RECLAIMABLE is what a
    prune with the same policy options would free.

    Exit codes: 0 success, 1 the engine failed a request, 2 usage or config error,
    3 engine unreachable.
    """
    try:
        settings = _load(params)
        _, plan = _snapshot_and_plan(settings, params["as_of"])
    except SparkjoyError as error:
        _fail(error)
        return
    if params["output_format"] == "json":
        click.echo(report.dumps(report.df_json(plan)))
    else:
        click.echo(report.render_df(plan, verbose=params["verbose"]))


class _Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def object_done(self, result: ObjectResult) -> None:
        if self.enabled:
            click.echo(f"{result.outcome.value}: {result.planned.kind.value} {report.display_id(result.planned)} "
                       f"{report.display_names(result.planned)}", err=True)


@main.command(context_settings=CONTEXT)
@engine_options
@policy_options
@state_db_option
@click.option("--dry-run", is_flag=True, help="Show the plan, delete nothing.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation (never forces a deletion).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the IDs of removed objects.")
@click.option("-v", "--verbose", is_flag=True, help="List every object with its decision and reason.")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table",
              help="Output format (json: see the README for the contract).")
@click.option("--audit", is_flag=True, help="After the run, verify every image (with its tags), build-cache "
              "record and volume the plan kept is still there; exit 1 if not.")
def prune(**params: Any) -> None:
    """Remove what the policy says is old and unused: stopped containers, images, build cache (volumes
    only with --volumes).

    An image's age counts from its last tag (or last use), never its creation. Images used
    by any container, excluded or out of scope stay, and so do the --keep-recent newest
    per repository. Nothing is ever force-deleted.

    Exit codes: 0 success (nothing to prune included), 1 failure or partial failure (some
    deletions failed, or --audit found a kept object missing), 2 usage or config error
    (nothing deleted), 3 engine unreachable, 4 aborted at the confirmation (declined, or no
    terminal to ask on and no -f).
    """
    try:
        settings = _load(params)
        engine, plan = _snapshot_and_plan(settings, params["as_of"], real_prune=not params["dry_run"])
    except SparkjoyError as error:
        _fail(error)
        return
    as_json = params["output_format"] == "json"

    if params["dry_run"]:
        if as_json:
            click.echo(report.dumps(report.plan_json(plan)))
        elif params["quiet"]:
            for o in plan.deletions:
                click.echo(o.id)
        else:
            click.echo("DRY RUN: nothing is deleted.\n")
            click.echo(report.render_plan(plan, verbose=params["verbose"]))
            click.echo("\n" + report.plan_totals(plan, dry_run=True))
        return

    if not plan.deletions:
        _remember_after_prune(settings, engine, plan)
        if as_json or params["audit"]:
            # --audit holds even when there is nothing to delete: the kept objects are checked.
            result = Executor(engine, audit=params["audit"]).execute(plan)
            if as_json:
                click.echo(report.dumps(report.result_json(result)))
            elif not params["quiet"]:
                click.echo(report.render_plan(plan, verbose=params["verbose"]))
                click.echo(report.render_result(result, verbose=params["verbose"]))
            if not result.ok:
                sys.exit(int(ExitCode.FAILED))
        elif not params["quiet"]:
            click.echo(report.render_plan(plan, verbose=params["verbose"]))
            click.echo("Total reclaimed space: 0B")
        return

    if not params["force"]:
        if not sys.stdin.isatty():
            click.echo(
                "sparkjoy: error: refusing to delete without confirmation: no terminal to ask on. "
                "Use -f to prune without asking, or --dry-run to see the plan.",
                err=True,
            )
            sys.exit(int(ExitCode.ABORTED))
        click.echo(report.render_plan(plan, verbose=params["verbose"]), err=True)
        click.echo("\n" + report.plan_totals(plan, dry_run=True), err=True)
        try:
            confirmed = click.confirm("WARNING! This will remove the objects listed above. Are you sure you want "
                                      "to continue?", default=False, err=True)
        except click.Abort:  # Ctrl-C or end of input at the question: a "no", not a failure
            confirmed = False
            click.echo("", err=True)
        if not confirmed:
            click.echo("Aborted: nothing was deleted.", err=True)
            sys.exit(int(ExitCode.ABORTED))

    interrupted: list[int] = []

    def interrupt(signum: int, frame: Any) -> None:
        if interrupted:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        interrupted.append(signum)
        # os.write, not click.echo: the handler may run in the middle of a write to stderr.
        os.write(2, b"\nInterrupted: finishing the deletions in progress, then stopping "
                 b"(Ctrl-C again to stop at once).\n")

    executor = Executor(engine, reporter=_Progress(params["verbose"] and not as_json), audit=params["audit"],
                        should_stop=lambda: bool(interrupted))
    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    # With -f the run starts right after the snapshot was read: its usage is the usage before
    # (one /system/df less, 0.5 s on 5,000 images). After a question, the engine is read again.
    usage_before = usage.engine_usage(plan.snapshot) if params["force"] else None
    try:
        result = executor.execute(plan, usage_before=usage_before)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    _remember_after_prune(settings, engine, plan, result)
    if as_json:
        click.echo(report.dumps(report.result_json(result)))
    elif params["quiet"]:
        for r in result.results:
            if r.outcome.value == "deleted":
                click.echo(r.planned.id)
    else:
        click.echo(report.render_result(result, verbose=params["verbose"]))
    if not result.ok:
        sys.exit(int(ExitCode.FAILED))


@main.command("config", context_settings=CONTEXT)
@engine_options
@policy_options
@state_db_option
@click.option("--keys", is_flag=True, help="List every config key with its description and example.")
def config_command(**params: Any) -> None:
    """Check the configuration and print the effective settings (or every key with --keys).

    The settings are printed as a config file sparkjoy reads back (`sparkjoy config > f.toml`);
    a key that is not set is a comment saying what applies instead.

    The check is the one `sparkjoy run` makes, settings that contradict each other included
    (such as daemon.interval with daemon.num_builds); the engine is not contacted.

    Exit codes: 0 the settings are valid, 2 a setting is wrong (each problem is named).
    """
    from .daemon.settings import contradictions

    if params["keys"]:
        for key in config.all_keys():
            where = f"[{key.section}] " if key.section else ""
            click.echo(f"{where}{key.name}  (env {key.env})\n    {key.description}\n    example: {key.example}")
        return
    try:
        settings = _load(params, checks=(contradictions,))  # what `run` rejects, with every other problem
    except SparkjoyError as error:
        _fail(error)
        return
    # The output is a config file sparkjoy reads back: `sparkjoy config > f.toml` keeps these settings.
    click.echo(f"# config file: {report.printable(str(settings.config_file or '(none)'))}")
    for line in config.toml_lines(settings.values):
        click.echo(line)


def run() -> None:  # pragma: no cover - console entry point wrapper
    main()
