"""The one-shot prune shares the daemon's memory: last use counts, and an image with no
usable timestamp ages from the first prune that saw it, never from nothing."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from sparkjoy import state
from tests.fixtures import import_image
from tests.integration.support import cli_prune, json_object, utcnow


def _state_db() -> Path:
    return state.default_path(os.environ)


def test_an_image_without_a_last_tag_time_is_kept_until_a_prune_has_seen_it_for_longer_than_the_max_age(
    clean_engine,
):
    # Loaded with its tag in the tarball: the engine records no last-tag time at all.
    image = import_image(clean_engine, 100_000, "untimed:1", created=utcnow() - timedelta(days=300),
                         tag_on_load=True)
    later = utcnow() + timedelta(hours=7)

    dry = cli_prune(clean_engine, "--keep-recent", "0", as_of=later, dry_run=True)
    assert json_object(dry, image)["decision"] == "keep"
    assert "age unknown" in json_object(dry, image)["reason"]

    # A real run deletes exactly what its dry run showed (nothing of this image) and
    # records when it first saw the image.
    real = cli_prune(clean_engine, "--keep-recent", "0", as_of=later)
    assert json_object(real, image)["result"] == "kept"

    # From then on its age counts from that first sighting: 7 hours later it is old.
    after = cli_prune(clean_engine, "--keep-recent", "0", as_of=later, dry_run=True)
    assert json_object(after, image)["decision"] == "delete"
    assert "first seen by sparkjoy" in json_object(after, image)["reason"]


def test_a_last_use_the_daemon_remembered_keeps_an_image_whose_last_tag_is_old(clean_engine):
    image = import_image(clean_engine, 100_000, "used:1")
    later = utcnow() + timedelta(hours=7)

    before = cli_prune(clean_engine, "--keep-recent", "0", "--max-age", "1h", as_of=later, dry_run=True)
    assert json_object(before, image)["decision"] == "delete"

    remembered = state.State.open(_state_db(), clean_engine.host)
    try:
        remembered.record_uses({image: later - timedelta(minutes=30)}, later)
    finally:
        remembered.close()

    after = cli_prune(clean_engine, "--keep-recent", "0", "--max-age", "1h", as_of=later, dry_run=True)
    assert json_object(after, image)["decision"] == "keep"
    assert "last used 30m" in json_object(after, image)["reason"]
