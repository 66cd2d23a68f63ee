"""A second `sparkjoy df` or `prune --dry-run` asks the engine for no image history it read
before (issue 5: "bounded, cached inspects"): history never changes for an image ID, so the
one-shot commands keep it in the state database. Counted through a proxy in front of the
real test engine; the answers with and without the cache must be the same."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing

from sparkjoy import state
from sparkjoy.engine import convert
from sparkjoy.engine.docker_engine import DockerEngine

from tests.fixtures import BUSYBOX_BASE, build, import_image, load_image, make_layer
from tests.integration.support import cli, counting_proxy, remove_image_by_hand

MB = 1_000_000


def _without_timing(data: dict) -> dict:
    return {key: value for key, value in data.items() if key not in ("now", "taken_at")}


def test_a_second_run_asks_only_for_the_history_of_images_it_has_not_seen(clean_engine):
    base = [make_layer(2 * MB, seed=41)]
    first = import_image(clean_engine, MB, "cached/a:1", base=base, seed=42)
    second = import_image(clean_engine, MB, "cached/b:1", base=base, seed=43)
    # Two layers of its own: their sizes cannot be told from its size, only its history has them.
    two_own = load_image(clean_engine, [*base, make_layer(MB, seed=45), make_layer(MB, seed=46)], "cached/d:1")
    with counting_proxy(clean_engine, "GET", r"^/images/.+/history$", "history") as (proxy, history, through):
        cold = cli(through, "df", "-v")
        read_cold = history.matched
        # d's history alone: it tells the shared base too, and then a's and b's own layer is
        # what their size leaves.
        assert read_cold == 1, "images on a shared base with one layer of their own need no history"

        warm = cli(through, "df", "-v")
        assert history.matched == read_cold, "the second run read no history again"
        assert _without_timing(warm) == _without_timing(cold)

        third = import_image(clean_engine, MB, "cached/c:1", base=base, seed=44)
        cli(through, "prune", "--dry-run")
        assert history.matched == read_cold, "a new image with one layer of its own on a known base needs none"
        load_image(clean_engine, [*base, make_layer(MB, seed=47), make_layer(MB, seed=48)], "cached/e:1")
        cli(through, "prune", "--dry-run")
        assert history.matched == read_cold + 1, "only the new image with two layers of its own is asked for"

        # The cache holds exactly the images the engine has, and never a command line.
        remove_image_by_hand(clean_engine, "cached/a:1")
        cli(through, "df")
        db = state.default_path(os.environ)
        with closing(sqlite3.connect(db)) as database:
            rows = dict(database.execute("SELECT image_id, steps FROM histories WHERE engine = ?",
                                         (proxy.host,)))
    assert two_own in rows and not {first, second, third} & set(rows)
    assert all("/bin/sh" not in steps and "sha256" not in steps for steps in rows.values())


def test_layers_told_from_other_images_histories_are_the_ones_each_images_own_history_gives(clean_engine):
    """The snapshot reads one history per shared base and tells each other image's single
    layer of its own from its size (``DockerEngine._layers``). Every image's layers must be
    exactly what reading its own history gives: same chain IDs, same sizes."""
    base = [make_layer(2 * MB, seed=51), make_layer(MB // 2, seed=52)]
    on_base = [import_image(clean_engine, (i + 1) * 100_000, f"told/one:{i}", base=base, seed=60 + i)
               for i in range(4)]
    middle = [*base, make_layer(300_000, seed=70)]
    on_middle = [import_image(clean_engine, 200_000 + i, f"told/mid:{i}", base=middle, seed=71 + i) for i in range(2)]
    own_two = load_image(clean_engine, [*base, make_layer(MB, seed=80), make_layer(10, seed=81)], "told/two:1")
    built = build(clean_engine, BUSYBOX_BASE + "RUN echo a > /a\nLABEL x=y\nRUN ln -s /a /b\n", "told/built:1",
                  buildkit=False)
    built_on = build(clean_engine, "FROM told/built:1\nRUN echo b > /c\n", "told/built-on:1", buildkit=False)

    with counting_proxy(clean_engine, "GET", r"^/images/.+/history$", "history") as (_, history, through):
        snapshot = DockerEngine.connect(host=through.host).snapshot()
        asked = history.matched
    layers = {image.id: image.layers for image in snapshot.images}
    with closing(clean_engine.client()) as client:
        for image_id in [*on_base, *on_middle, own_two, built, built_on]:
            own = convert.layers_from(client.api.inspect_image(image_id), client.api.history(image_id),
                                      client.api.inspect_image(image_id)["Size"])
            assert own, f"{image_id}: its own history lines up with its layers"
            assert layers[image_id] == own, image_id
    assert asked < len(layers), f"{asked} histories for {len(layers)} images: none was told from the others"


def test_layers_told_once_are_kept_with_the_remembered_inspects_and_need_no_history_again(clean_engine):
    """An image ID's layers never change: told once (from a history, or from the others'),
    they are kept with its remembered inspect (``convert.TOLD_LAYERS``), and a later snapshot
    takes them without any history, even with no history cache. A kept entry that does not
    read as layers is ignored and the layers told again."""
    base = [make_layer(2 * MB, seed=91)]
    on_base = [import_image(clean_engine, (i + 1) * 100_000, f"kept/one:{i}", base=base, seed=92 + i)
               for i in range(3)]
    own_two = load_image(clean_engine, [*base, make_layer(MB, seed=96), make_layer(10, seed=97)], "kept/two:1")

    with counting_proxy(clean_engine, "GET", r"^/images/.+/history$", "history") as (_, history, through):
        first_engine = DockerEngine.connect(host=through.host, remember_inspects=True)
        first_engine.know_inspects({}, None)  # as a first run does: nothing remembered yet
        first = first_engine.snapshot()
        inspects, mark = first_engine.remembered_inspects(first)
        asked = history.matched
        assert asked >= 1 and mark is not None
        assert all(convert.told_layers(inspects[i]) for i in [*on_base, own_two]), "each image's layers are kept"

        second_engine = DockerEngine.connect(host=through.host, remember_inspects=True)
        second_engine.know_inspects(inspects, mark)  # and no histories: the told layers are enough
        second = second_engine.snapshot()
        assert history.matched == asked, "no history asked for again"

        spoiled = dict(inspects)
        spoiled[own_two] = {**inspects[own_two], convert.TOLD_LAYERS: [["sha256:x", -1]]}
        third_engine = DockerEngine.connect(host=through.host, remember_inspects=True)
        third_engine.know_inspects(spoiled, mark)
        third = third_engine.snapshot()
        assert history.matched == asked + 1, "the spoiled entry is told again, from its own history"

    def layers(snapshot):
        return {image.id: image.layers for image in snapshot.images}

    assert layers(second) == layers(first) == layers(third)
    assert all(layers(first)[i] for i in [*on_base, own_two])
