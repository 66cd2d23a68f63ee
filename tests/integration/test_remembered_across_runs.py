"""A second `sparkjoy df` or `prune --dry-run` inspects only the images that changed since the
first (issue 5: `df` on a second run): the one-shot commands keep the images' inspects in the
state database with a mark in the engine's event log, and the next run reads the events since
that mark (one call) and inspects again what they name. When the events cannot tell what
changed (an error, an answer as long as the engine's event buffer, a pull that names only a
reference, an engine restart that lost the buffer), every image is inspected again.

Counted through a proxy in front of the real test engine (each proxy is an engine address of
its own, so its state starts empty); the restart case talks to the engine directly, as a
restart ends a proxy's connections.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing
from datetime import datetime, timedelta, timezone
from typing import Callable

import pytest

from sparkjoy import state

from tests.faultproxy import Exchange, FaultProxy, Rule, delay, respond, rewrite_json
from tests.fixtures import import_image
from tests.integration.support import (Through, cli, counting_proxy, json_ids, json_object, parse_engine_time, tag,
                                       tags_of)

MB = 1_000_000


def _counting_inspects(engine):
    """A proxy counting image inspects (see support.counting_proxy)."""
    return counting_proxy(engine, "GET", r"^/images/[^/]+/json$", "inspect")


def _seen(data: dict, image_id: str) -> tuple[list[str], str | None]:
    found = json_object(data, image_id)
    return sorted(found["names"]), found["reference_time"]


def test_a_second_run_inspects_only_the_images_the_events_say_changed(clean_engine):
    a = import_image(clean_engine, MB, "across/a:1", seed=61)
    b = import_image(clean_engine, MB, "across/b:1", seed=62)
    with _counting_inspects(clean_engine) as (proxy, inspects, through):
        first = cli(through, "df", "-v")
        assert inspects.matched >= 2

        before = inspects.matched
        second = cli(through, "prune", "--dry-run")
        assert inspects.matched == before, "nothing changed: no image inspected again"
        assert _seen(second, a) == _seen(first, a) and _seen(second, b) == _seen(first, b)

        tag(clean_engine, a, "across/a:1")  # the same tag again: only its last-tag time moves
        before = inspects.matched
        third = cli(through, "df", "-v")
        assert inspects.matched == before + 1, "only the re-tagged image is inspected again"
        names, when = _seen(third, a)
        assert names == ["across/a:1"]
        assert parse_engine_time(when) > parse_engine_time(_seen(first, a)[1])
        assert _seen(third, b) == _seen(first, b)

        tag(clean_engine, b, "across/b:2")
        fourth = cli(through, "df", "-v")
        assert _seen(fourth, b)[0] == ["across/b:1", "across/b:2"]
        assert _seen(fourth, a) == _seen(third, a)

        # What is kept is what sparkjoy reads of an inspect: never the image's command or config.
        db = state.default_path(os.environ)
        with closing(sqlite3.connect(db)) as database:
            rows = dict(database.execute("SELECT image_id, inspect FROM inspects WHERE engine = ?",
                                         (proxy.host,)))
    assert set(rows) == {a, b}
    for row in rows.values():
        kept = json.loads(row)
        assert set(kept) <= {"Id", "RepoTags", "Created", "Size", "Parent", "Metadata", "RootFS", "Config"}
        assert "Cmd" not in row and "/bin" not in row


def _network_events(count: int) -> bytes:
    """``count`` events of now (so after the last run's mark), about something no image is."""
    line = {"Type": "network", "Action": "connect", "id": "n0", "Actor": {"ID": "n0"}, "scope": "local"}
    now = time.time_ns()
    return b"".join(json.dumps({**line, "timeNano": now + i}).encode() + b"\n" for i in range(count))


def _pull() -> bytes:
    return json.dumps({"Type": "image", "Action": "pull", "id": "busybox:latest",
                       "Actor": {"ID": "busybox:latest"}, "timeNano": time.time_ns()}).encode() + b"\n"


def _more_events(extra: Callable[[], bytes]) -> Callable[[Exchange], None]:
    """An action: the engine's events, then ``extra()``, in a chunked stream as the engine sends
    events (the SDK reads an answer of another framing as one JSON document)."""

    def action(exchange: Exchange) -> None:
        response = exchange.fetch()
        body = response.body + extra()
        head = response.head(None)[:-2] + b"Transfer-Encoding: chunked\r\n\r\n"
        exchange.send(head + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")

    return action


def _hanging_stream(exchange: Exchange) -> None:
    """An action: the head of a chunked events answer, then nothing (an engine or proxy that
    holds the stream open)."""
    response = exchange.fetch()
    exchange.send(response.head(None)[:-2] + b"Transfer-Encoding: chunked\r\n\r\n")
    exchange.wait(60)


def _retag_event_of_long_ago(image_id: str) -> Callable[[], bytes]:
    """A tag event published after everything the last run read, stamped long before its mark
    (a clock stepped back, or an event stamped before and published after the last run's read)."""
    return lambda: json.dumps({"Type": "image", "Action": "tag", "id": image_id, "Actor": {"ID": image_id},
                               "timeNano": 1_000_000_000}).encode() + b"\n"


# The engine's own answer is kept in each (so the last run's newest event is still in it).
CANNOT_TELL = {
    "the events call fails": respond(500),
    "the events answer does not come (the run waits 10 s, not forever)": delay(60),
    "the events stream stops after its head (the run waits 10 s, not forever)": _hanging_stream,
    "as many events as the engine's buffer holds": _more_events(lambda: _network_events(256)),
    "a pull, which names a reference and no image ID": _more_events(_pull),
}


def test_events_about_other_objects_ask_nothing_again(clean_engine):
    import_image(clean_engine, MB, "across/a:1", seed=66)
    with _counting_inspects(clean_engine) as (proxy, inspects, through):
        cli(through, "df")
        proxy.add(Rule("GET", r"^/events$", _more_events(lambda: _network_events(10))))
        before = inspects.matched
        cli(through, "df")
        assert inspects.matched == before


@pytest.mark.parametrize("fault", CANNOT_TELL, ids=list(CANNOT_TELL))
def test_when_the_events_cannot_tell_what_changed_every_image_is_inspected_again(clean_engine, fault):
    a = import_image(clean_engine, MB, "across/a:1", seed=63)
    b = import_image(clean_engine, MB, "across/b:1", seed=64)
    with _counting_inspects(clean_engine) as (proxy, inspects, through):
        first = cli(through, "df", "-v")
        events = proxy.add(Rule("GET", r"^/events$", CANNOT_TELL[fault], times=1))
        before = inspects.matched
        started = time.monotonic()
        second = cli(through, "df", "-v")
        assert time.monotonic() - started < 45, "the run gave up on the events (after 10 s), not waited for them"
        assert events.fired == 1
        assert inspects.matched - before == 2, "both images inspected again"
        assert _seen(second, a) == _seen(first, a) and _seen(second, b) == _seen(first, b)

        if fault.startswith(("the events call fails", "the events answer does not come", "the events stream")):
            # Trusted again once a run has read the events (the one after the failure has no
            # newest event to look for, so it reads the whole buffer, which names a and b).
            # (After the others it cannot: their newest event, made up here, is not in the
            # engine's buffer for the next run to find.)
            cli(through, "df", "-v")
            before = inspects.matched
            cli(through, "df", "-v")
            assert inspects.matched == before


def test_a_restart_that_lost_the_engines_events_is_noticed(clean_engine):
    a = import_image(clean_engine, MB, "across/a:1", seed=65)
    first = cli(clean_engine, "df", "-v")  # its mark: the newest event it read (a's tag, at least)
    tag(clean_engine, a, "across/a:1")  # tagged again, and then the event of it lost:
    clean_engine.restart()
    second = cli(clean_engine, "df", "-v")
    assert parse_engine_time(_seen(second, a)[1]) > parse_engine_time(_seen(first, a)[1]), (
        "the engine's events since the last run are gone, so a's remembered inspect must not be used")


def test_an_event_after_the_last_runs_newest_counts_whatever_its_time(clean_engine):
    a = import_image(clean_engine, MB, "across/a:1", seed=67)
    import_image(clean_engine, MB, "across/b:1", seed=68)
    with _counting_inspects(clean_engine) as (proxy, inspects, through):
        cli(through, "df")
        proxy.add(Rule("GET", r"^/events$", _more_events(_retag_event_of_long_ago(a)), times=1))
        before = inspects.matched
        cli(through, "df")
        assert inspects.matched == before + 1, "a, named by an event the last run had not read, is inspected again"


def test_another_engine_behind_the_same_address_is_noticed(clean_engine):
    import_image(clean_engine, MB, "across/a:1", seed=69)
    import_image(clean_engine, MB, "across/b:1", seed=70)
    with _counting_inspects(clean_engine) as (proxy, inspects, through):
        cli(through, "df")
        proxy.add(Rule("GET", r"^/info$", rewrite_json(lambda info: {**info, "ID": "another-engine"}), times=1))
        before = inspects.matched
        cli(through, "df")
        assert inspects.matched - before == 2, "an engine of another ID: every image inspected again"


def test_a_real_prune_after_a_df_inspects_only_what_its_deletions_rest_on(clean_engine):
    """A real prune plans from remembered inspects too, and reads afresh what each deletion rests
    on: the image itself (the executor's re-check) and the images holding its repository's
    keep-recent places (executor.ranks_changed). The others are not asked again."""
    ids = [import_image(clean_engine, MB, f"across/r:{n}", seed=75 + n) for n in range(3)]  # r:2 newest
    import_image(clean_engine, MB, "across/other:1", seed=79)
    import_image(clean_engine, MB, "across/other:2", seed=80)
    with _counting_inspects(clean_engine) as (proxy, inspects, through):
        cli(through, "df")
        before = inspects.matched
        cli(through, "prune", "--dry-run")
        assert inspects.matched == before
        as_of = (datetime.now(timezone.utc) + timedelta(days=10)).isoformat()
        run = cli(through, "prune", "-f", "--keep-recent", "2", "--max-age", "1d", "--as-of", as_of)
        assert json_ids(run, result="deleted") == {ids[0]}
        # r:0 re-checked before its deletion; r:1 and r:2, whose places decide it, read afresh;
        # other:1 and other:2 hold places where nothing goes: not asked.
        assert inspects.matched - before == 3
    assert tags_of(clean_engine, ids[0]) is None and tags_of(clean_engine, ids[2]) == {"across/r:2"}


def test_a_remembered_answer_gone_stale_never_costs_a_repository_its_newest(clean_engine):
    """An answer remembered wrong (here: k read as tagged after d, by a proxy rewriting it once)
    would give k the repository's one keep-recent place and d's re-check, which sees only d,
    would let d go. The places are read afresh first: k reads otherwise, so every image is
    inspected again and the plan made anew."""
    k = import_image(clean_engine, MB, "across/r:k", seed=81)
    d = import_image(clean_engine, MB, "across/r:d", seed=82)  # tagged after k: the newest
    with closing(clean_engine.client()) as client:
        d_tagged = parse_engine_time(client.api.inspect_image(d)["Metadata"]["LastTagTime"])
    stale = (d_tagged + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    as_of = (d_tagged + timedelta(days=10)).isoformat()

    def misread(answer: dict) -> dict:
        return {**answer, "Metadata": {**answer["Metadata"], "LastTagTime": stale}}

    with FaultProxy(clean_engine.socket_path) as proxy:
        through = Through(proxy)
        proxy.add(Rule("GET", rf"^/images/{k}/json$", rewrite_json(misread), times=1))
        first = cli(through, "df")
        assert json_object(first, k)["reference_time"] > json_object(first, d)["reference_time"]
        run = cli(through, "prune", "-f", "--keep-recent", "1", "--max-age", "1d", "--as-of", as_of)
    assert json_ids(run, result="deleted") == {k}
    assert tags_of(clean_engine, d) == {"across/r:d"} and tags_of(clean_engine, k) is None


def test_a_second_run_inspects_no_stopped_container_again_until_its_events_say_it_ran(clean_engine):
    """A stopped container is inspected for its finish time; that changes only when it runs
    again, which its events tell. What is kept of it is its state and finish time only."""
    from tests.fixtures import busybox_image, run_container

    image = busybox_image(clean_engine, "across/box:1")
    stopped = run_container(clean_engine, image, state="exited")
    with counting_proxy(clean_engine, "GET", r"^/containers/[^/]+/json$", "inspect") as (proxy, inspects, through):
        first = cli(through, "prune", "--dry-run")
        assert inspects.matched == 1
        finished = json_object(first, stopped)["reference_time"]

        second = cli(through, "df", "-v")
        third = cli(through, "prune", "--dry-run")
        assert inspects.matched == 1, "nothing changed: the stopped container is not inspected again"
        assert json_object(third, stopped)["reference_time"] == finished
        assert second

        with closing(clean_engine.client()) as client:
            container = client.containers.get(stopped)
            container.start()
            container.wait(timeout=60)
        fourth = cli(through, "prune", "--dry-run")
        assert inspects.matched == 2, "it ran again: inspected again"
        assert parse_engine_time(json_object(fourth, stopped)["reference_time"]) > parse_engine_time(finished)

        db = state.default_path(os.environ)
        with closing(sqlite3.connect(db)) as database:
            [row] = database.execute("SELECT inspect FROM inspects WHERE engine = ? AND image_id = ?",
                                     (proxy.host, stopped)).fetchall()
    assert set(json.loads(row[0])) == {"Id", "State"}
    assert set(json.loads(row[0])["State"]) <= {"Status", "FinishedAt"}
