"""A second `sparkjoy df` or `prune --dry-run` asks the engine for no image history it read
before (issue 5: "bounded, cached inspects"): history never changes for an image ID, so the
one-shot commands keep it in the state database. Counted through a proxy in front of the
real test engine; the answers with and without the cache must be the same."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing

from sparkjoy import state

from tests.fixtures import import_image, make_layer
from tests.integration.support import cli, counting_proxy, remove_image_by_hand

MB = 1_000_000


def _without_timing(data: dict) -> dict:
    return {key: value for key, value in data.items() if key not in ("now", "taken_at")}


def test_a_second_run_asks_only_for_the_history_of_images_it_has_not_seen(clean_engine):
    base = [make_layer(2 * MB, seed=41)]
    first = import_image(clean_engine, MB, "cached/a:1", base=base, seed=42)
    second = import_image(clean_engine, MB, "cached/b:1", base=base, seed=43)
    with counting_proxy(clean_engine, "GET", r"^/images/.+/history$", "history") as (proxy, history, through):
        cold = cli(through, "df", "-v")
        read_cold = history.matched
        assert read_cold >= 2, "images sharing a layer need their history for per-layer bytes"

        warm = cli(through, "df", "-v")
        assert history.matched == read_cold, "the second run read no history again"
        assert _without_timing(warm) == _without_timing(cold)

        third = import_image(clean_engine, MB, "cached/c:1", base=base, seed=44)
        cli(through, "prune", "--dry-run")
        assert history.matched == read_cold + 1, "only the new image's history is asked for"

        # The cache holds exactly the images the engine has, and never a command line.
        remove_image_by_hand(clean_engine, "cached/a:1")
        cli(through, "df")
        db = state.default_path(os.environ)
        with closing(sqlite3.connect(db)) as database:
            rows = dict(database.execute("SELECT image_id, steps FROM histories WHERE engine = ?",
                                         (proxy.host,)))
    assert {second, third} <= set(rows) and first not in rows
    assert all("/bin/sh" not in steps and "sha256" not in steps for steps in rows.values())
