"""`sparkjoy df`'s table: which objects it lists as the largest."""

from __future__ import annotations

from datetime import timedelta

from sparkjoy import report
from sparkjoy.planner import plan
from sparkjoy.policy import Policy

from tests.unit.builders import NOW, ago, image, layers, record, snapshot


def listed_images(text: str) -> list[str]:
    section = text.split("\nImages, largest")[1].split("\n\n")[0]
    return [line.split()[1] for line in section.splitlines()[2:]]


def test_the_largest_are_those_of_the_largest_size_even_when_build_cache_holds_every_layer() -> None:
    # On a BuildKit host the cache holds each image's layers too: every image's unique bytes
    # are 0, so the largest must come from their size, not at random.
    sizes = {f"app:{n}": size for n, size in enumerate([5, 70, 20, 90, 40, 60, 10])}
    shot = snapshot(
        [image(f"i{n}", tag, tagged=ago(days=1), layer_list=layers((f"l{n}", size)))
         for n, (tag, size) in enumerate(sizes.items())],
        build_cache=[record(f"r{n}", shared=True, size=size, last_used=ago(hours=1))
                     for n, size in enumerate(sizes.values())],
    )
    text = report.render_df(plan(shot, Policy(max_age=timedelta(days=30)), now=NOW), largest=3)
    assert listed_images(text) == ["app:3", "app:1", "app:5"]
    assert "Images, largest 3 of 7:" in text


def test_between_equal_sizes_the_one_that_frees_more_alone_comes_first() -> None:
    shot = snapshot([
        image("a", "shared:1", tagged=ago(days=1), layer_list=layers(("base", 30), ("a", 10))),
        image("b", "shared:2", tagged=ago(days=1), layer_list=layers(("base", 30), ("b", 10))),
        image("c", "alone:1", tagged=ago(days=1), layer_list=layers(("c", 40))),
    ])
    text = report.render_df(plan(shot, Policy(max_age=timedelta(days=30)), now=NOW), largest=2)
    assert listed_images(text) == ["alone:1", "shared:1"]


def test_layers_freed_with_the_cache_holding_them_count_under_images_never_above_their_size() -> None:
    # Each image's only layer is held by a BuildKit record too: deleting image and record frees
    # the layer, last with the record. Its bytes are in Images' SIZE, so they count there.
    shot = snapshot(
        [image(f"i{n}", f"app:{n}", tagged=ago(days=40), layer_list=layers((f"l{n}", 100 + n))) for n in range(3)],
        build_cache=[record(f"r{n}", shared=True, size=100 + n, last_used=ago(days=40)) for n in range(3)]
        + [record("own", size=50, last_used=ago(days=40))],
        layers_size=303,
    )
    the_plan = plan(shot, Policy(max_age=timedelta(days=30), keep_recent=0), now=NOW)
    usage = {u.kind.value: u for u in report.df_summary(the_plan)[0]}
    assert (usage["image"].bytes, usage["image"].reclaimable) == (303, 303)
    assert (usage["build-cache"].bytes, usage["build-cache"].reclaimable) == (50, 50)
    assert sum(u.reclaimable for u in usage.values()) == the_plan.predicted_bytes
    text = report.render_df(the_plan)
    assert "(100%)" in text and "%)" in text and not any(
        int(p.split("%")[0]) > 100 for p in text.split("(")[1:] if p.split("%")[0].isdigit())
    assert "reclaimable includes 303B of layers freed with the build cache holding them" in text
    totals = report.plan_totals(the_plan, dry_run=True)
    assert totals.startswith("Would reclaim: 353B")
    assert "303B of it are image layers that build cache holds too" in totals
