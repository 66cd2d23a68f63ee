"""The planner's rules as scenarios: snapshot + policy + memory + now -> a decision per object.

Each scenario lists EVERY object of its snapshot with the expected decision and words its
reason must contain, so a scenario also fails when an object is silently dropped or added.
``order`` names deletions that must happen in that relative order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta

import pytest

from sparkjoy.model import ContainerState
from sparkjoy.planner import CacheOwner, Decision, Memory, owners_left_behind, plan
from sparkjoy.policy import LabelSelector, Policy, VolumeMode

from .builders import NOW, ago, anonymous_name, container, image, layers, record, snapshot, volume

H6 = timedelta(hours=6)
H24 = timedelta(hours=24)
# Most scenarios switch keep-recent off so that only the rule under test decides.
PLAIN = Policy(max_age=H6, keep_recent=0)


@dataclass(frozen=True)
class Scenario:
    name: str
    snapshot: object
    expect: dict[str, tuple[str, ...]]  # object id -> ("delete"|"keep", reason words...)
    policy: Policy = PLAIN
    memory: Memory = field(default_factory=Memory)
    order: tuple[str, ...] = ()


def keep(*words: str) -> tuple[str, ...]:
    return ("keep", *words)


def delete(*words: str) -> tuple[str, ...]:
    return ("delete", *words)


ANON_OLD = anonymous_name("old")
ANON_USED = anonymous_name("used")
ANON_FREED = anonymous_name("freed")
ANON_UNKNOWN = anonymous_name("unknown")

SCENARIOS = [
    # -- image age -----------------------------------------------------------------
    Scenario(
        "an image built long ago but tagged a minute ago is kept: age counts from the last tag",
        snapshot([image("img", "app:1", tagged=ago(minutes=1), created=ago(days=300))]),
        {"img": keep("recent", "last tagged")},
        policy=Policy(max_age=H24, keep_recent=0),
    ),
    Scenario(
        "an image tagged long ago is old even when its creation time is recent",
        snapshot([image("img", "app:1", tagged=ago(days=2), created=ago(minutes=1))]),
        {"img": delete("old", "last tagged", "2d")},
        policy=Policy(max_age=H24, keep_recent=0),
    ),
    Scenario(
        "a last use remembered after the last tag makes an old image recent",
        snapshot([image("img", "app:1", tagged=ago(days=3))]),
        {"img": keep("recent", "last used")},
        memory=Memory(last_used={"img": ago(hours=1)}),
    ),
    Scenario(
        "a last use remembered before the last tag does not make the image older",
        snapshot([image("img", "app:1", tagged=ago(hours=1))]),
        {"img": keep("recent", "last tagged")},
        memory=Memory(last_used={"img": ago(days=3)}),
    ),
    Scenario(
        "an image whose later last use is itself old is deleted, dated by that use",
        snapshot([image("img", "app:1", tagged=ago(days=5))]),
        {"img": delete("old", "last used", "1d")},
        memory=Memory(last_used={"img": ago(days=1)}),
    ),
    Scenario(
        "first seen dates an image only when the engine and memory give no other time",
        snapshot(
            [
                image("no-times", "app:1", tagged=None, created=ago(days=900)),
                image("tagged-recently", "app:2", tagged=ago(hours=1)),
            ]
        ),
        {
            "no-times": delete("old", "first seen"),
            "tagged-recently": keep("recent", "last tagged"),
        },
        memory=Memory(first_seen={"no-times": ago(days=2), "tagged-recently": ago(days=30)}),
    ),
    Scenario(
        "an image of unknown age is kept, even when every age counts as old",
        snapshot([image("img", "app:1", tagged=None, created=ago(days=900))]),
        {"img": keep("age unknown")},
        policy=Policy(max_age=timedelta(seconds=-1), keep_recent=0),
    ),
    Scenario(
        "an image tagged in the future (clock skew) is recent",
        snapshot([image("img", "app:1", tagged=NOW + timedelta(hours=3))]),
        {"img": keep("recent", "in the future")},
    ),
    # -- keep recent -----------------------------------------------------------------
    Scenario(
        "keep-recent keeps the newest old images of a repository; a recent one does not use a slot",
        snapshot(
            [
                image("fresh", "app:5", tagged=ago(hours=1)),
                image("d1", "app:4", tagged=ago(days=1)),
                image("d2", "app:3", tagged=ago(days=2)),
                image("d3", "app:2", tagged=ago(days=3)),
                image("d4", "app:1", tagged=ago(days=4)),
                image("other", "web:1", tagged=ago(days=9)),
            ]
        ),
        {
            "fresh": keep("recent"),
            "d1": keep("kept recent", "#1", "app"),
            "d2": keep("kept recent", "#2", "app"),
            "d3": delete("old"),
            "d4": delete("old"),
            # web has only one old image, so it is that repository's newest.
            "other": keep("kept recent", "#1", "web"),
        },
        policy=Policy(max_age=H6, keep_recent=2),
    ),
    Scenario(
        "an image in two repositories is kept when it is among the newest of either",
        snapshot(
            [
                image("both", "a:1", "b:1", tagged=ago(days=2)),
                image("newer-a", "a:2", tagged=ago(days=1)),
                image("older-b", "b:0", tagged=ago(days=3)),
            ]
        ),
        {
            "both": keep("kept recent", "repository b"),
            "newer-a": keep("kept recent", "repository a"),
            "older-b": delete("old"),
        },
        policy=Policy(max_age=H6, keep_recent=1),
    ),
    Scenario(
        "an image in use does not count towards keep-recent: only old candidates do",
        snapshot(
            [
                image("running", "app:3", tagged=ago(days=1)),
                image("old-2", "app:2", tagged=ago(days=2)),
                image("old-1", "app:1", tagged=ago(days=3)),
            ],
            containers=[container("c", "running", ContainerState.RUNNING, created=ago(days=1))],
        ),
        {
            "c": keep("in use", "running"),
            "running": keep("in use by container c", "running"),
            "old-2": keep("kept recent", "#1"),
            "old-1": delete("old"),
        },
        policy=Policy(max_age=H6, keep_recent=1),
    ),
    Scenario(
        "dangling images are not protected by keep-recent",
        snapshot(
            [
                image("dangling", tagged=ago(days=2)),
                image("tagged", "app:1", tagged=ago(days=2)),
            ]
        ),
        {"dangling": delete("old"), "tagged": keep("kept recent")},
        policy=Policy(max_age=H6, keep_recent=5),
    ),
    Scenario(
        "ties in keep-recent are broken by id, the same way every time",
        snapshot(
            [
                image("tie-a", "app:1", tagged=ago(days=2)),
                image("tie-b", "app:2", tagged=ago(days=2)),
            ]
        ),
        {"tie-b": keep("kept recent", "#1"), "tie-a": delete("old")},
        policy=Policy(max_age=H6, keep_recent=1),
    ),
    # -- scope ------------------------------------------------------------------------
    Scenario(
        "every label selector must match: KEY alone matches any value, KEY=VALUE only that value",
        snapshot(
            [
                image("p1-team", "a:1", tagged=ago(days=2), labels={"project": "p1", "team": "x"}),
                image("p1-team-empty", "a:2", tagged=ago(days=2), labels={"project": "p1", "team": ""}),
                image("p1-only", "a:3", tagged=ago(days=2), labels={"project": "p1"}),
                image("p2-team", "a:4", tagged=ago(days=2), labels={"project": "p2", "team": "x"}),
                image("no-labels", "a:5", tagged=ago(days=2)),
            ]
        ),
        {
            "p1-team": delete("old"),
            "p1-team-empty": delete("old"),
            "p1-only": keep("out of scope", "lacks label", "project=p1", "team"),
            "p2-team": keep("out of scope"),
            "no-labels": keep("out of scope"),
        },
        policy=Policy(max_age=H6, keep_recent=0, labels=(LabelSelector("project", "p1"), LabelSelector("team"))),
    ),
    Scenario(
        "a repository glob scopes images: every tag's repository must match (a tag outside keeps the image whole), untagged never does",
        snapshot(
            [
                image("p1", "p1/web:1", tagged=ago(days=2)),
                image("p2", "p2/web:1", tagged=ago(days=2)),
                image("p1-and-p2", "p2/x:1", "p1/y:1", tagged=ago(days=2)),
                image("registry", "reg:5000/p1/web:1", tagged=ago(days=2)),
                image("dangling", tagged=ago(days=2)),
            ]
        ),
        {
            "p1": delete("old"),
            "p2": keep("out of scope", "repository"),
            "p1-and-p2": keep("out of scope", "also tagged p2/x:1"),
            "registry": keep("out of scope"),
            "dangling": keep("out of scope", "untagged"),
        },
        policy=Policy(max_age=H6, keep_recent=0, repos=("p1/*",)),
    ),
    Scenario(
        "an exclusion matching any one tag protects the whole image",
        snapshot(
            [
                image("redis", "myapp:old", "redis:7", tagged=ago(days=2)),
                image("mine", "myapp:older", tagged=ago(days=3)),
            ]
        ),
        {
            "redis": keep("excluded", "redis:7", "redis:*"),
            "mine": delete("old"),
        },
        policy=Policy(max_age=H6, keep_recent=0, exclude=("redis:*",)),
    ),
    Scenario(
        "field case i: scope project=p1 with exclusion redis:* deletes only p1's old images",
        snapshot(
            [
                image("p1-old", "p1/app:1", tagged=ago(days=2), labels={"project": "p1"}),
                image("p1-new", "p1/app:2", tagged=ago(hours=1), labels={"project": "p1"}),
                image("p2-old", "p2/app:1", tagged=ago(days=2), labels={"project": "p2"}),
                image("redis", "cache:1", "redis:7", tagged=ago(days=2)),
            ]
        ),
        {
            "p1-old": delete("old"),
            "p1-new": keep("recent"),
            "p2-old": keep("out of scope"),
            "redis": keep("out of scope"),
        },
        policy=Policy(max_age=H6, keep_recent=0, labels=(LabelSelector("project", "p1"),), exclude=("redis:*",)),
    ),
    # -- containers pin images ----------------------------------------------------------
    Scenario(
        "a container in any state that stays pins its image with all of its tags",
        snapshot(
            [
                image(f"img-{state}", f"app:{state}", f"other:{state}", tagged=ago(days=2))
                for state in ("running", "exited", "created", "paused", "unknown", "restarting", "dead")
            ],
            containers=[
                container("c-running", "img-running", "running", created=ago(days=3)),
                container("c-exited", "img-exited", "exited", created=ago(days=3), finished=ago(hours=1)),
                container("c-created", "img-created", "created", created=ago(hours=1)),
                container("c-paused", "img-paused", "paused", created=ago(days=3)),
                container("c-unknown", "img-unknown", "unknown", created=ago(days=3), finished=ago(days=3)),
                container("c-restarting", "img-restarting", "restarting", created=ago(days=3)),
                container("c-dead", "img-dead", "dead", created=ago(days=3), finished=None),
            ],
        ),
        {
            "c-running": keep("in use", "running"),
            "c-exited": keep("recent", "finished"),
            "c-created": keep("recent", "never started"),
            "c-paused": keep("in use", "paused"),
            "c-unknown": keep("in use", "unknown"),
            "c-restarting": keep("in use", "restarting"),
            "c-dead": keep("no usable timestamp"),
            **{
                f"img-{state}": keep("in use by container", f"c-{state}", state)
                for state in ("running", "exited", "created", "paused", "unknown", "restarting", "dead")
            },
        },
    ),
    Scenario(
        "an image whose only container is deleted in the same plan is deleted after it",
        snapshot(
            [image("img", "app:1", "app:2", tagged=ago(days=2))],
            containers=[container("c", "img", "exited", created=ago(days=3), finished=ago(days=2))],
        ),
        {"c": delete("stopped", "finished"), "img": delete("old")},
        order=("c", "img"),
    ),
    Scenario(
        "field case e: with container pruning off, images of exited and never-started containers stay",
        snapshot(
            [
                image("img-exited", "a:1", tagged=ago(days=2)),
                image("img-created", "b:1", tagged=ago(days=2)),
            ],
            containers=[
                container("c-exited", "img-exited", "exited", created=ago(days=3), finished=ago(days=3)),
                container("c-created", "img-created", "created", created=ago(days=3)),
            ],
        ),
        {
            "c-exited": keep("container pruning is off"),
            "c-created": keep("container pruning is off"),
            "img-exited": keep("in use by container c-exited", "exited"),
            "img-created": keep("in use by container c-created", "created"),
        },
        policy=Policy(max_age=H6, keep_recent=0, containers=False),
    ),
    Scenario(
        "a container still pins its image when image pruning is off (and the image stays)",
        snapshot(
            [image("img", "a:1", tagged=ago(days=2))],
            containers=[container("c", "img", "exited", created=ago(days=3), finished=ago(days=3))],
        ),
        {"c": delete("stopped"), "img": keep("image pruning is off")},
        policy=Policy(max_age=H6, keep_recent=0, images=False),
    ),
    # -- container age ------------------------------------------------------------------
    Scenario(
        "an exited container's age counts from when it finished, not when it was created",
        snapshot(
            containers=[
                container("long-lived", "gone", "exited", created=ago(days=30), finished=ago(hours=1)),
                container("finished-long-ago", "gone", "exited", created=ago(days=30), finished=ago(days=2)),
                container("dead-long-ago", "gone", "dead", created=ago(days=30), finished=ago(days=2)),
            ]
        ),
        {
            "long-lived": keep("recent", "finished 1h ago"),
            "finished-long-ago": delete("stopped", "finished 2d ago"),
            "dead-long-ago": delete("stopped", "dead"),
        },
    ),
    Scenario(
        "a never-started container's age counts from its creation",
        snapshot(
            containers=[
                container("new", "gone", "created", created=ago(hours=1)),
                container("old", "gone", "created", created=ago(days=2), finished=ago(hours=1)),
            ]
        ),
        {
            "new": keep("recent", "never started"),
            # Its finished time is ignored: it never ran.
            "old": delete("stopped", "never started", "2d"),
        },
    ),
    Scenario(
        "a zero or missing timestamp never makes a container old, even when everything is old",
        snapshot(
            containers=[
                container("exited-no-finish", "gone", "exited", created=ago(days=30), finished=None),
                container("created-no-time", "gone", "created", created=None),
            ]
        ),
        {
            "exited-no-finish": keep("no usable timestamp"),
            "created-no-time": keep("no usable timestamp"),
        },
        policy=Policy(max_age=timedelta(seconds=-1), keep_recent=0),
    ),
    Scenario(
        "a container outside the label scope stays, whatever its age",
        snapshot(
            containers=[
                container("mine", "gone", "exited", finished=ago(days=2), labels={"project": "p1"}),
                container("theirs", "gone", "exited", finished=ago(days=2), labels={"project": "p2"}),
            ]
        ),
        {"mine": delete("stopped"), "theirs": keep("out of scope")},
        policy=Policy(max_age=H6, keep_recent=0, labels=(LabelSelector("project", "p1"),)),
    ),
    # -- image graph --------------------------------------------------------------------
    Scenario(
        "parents of a kept image stay, up the whole classic-builder chain",
        snapshot(
            [
                image("base", "base:1", tagged=ago(days=9)),
                image("mid", tagged=ago(days=8), parent="base"),
                image("leaf", "app:1", tagged=ago(hours=1), parent="mid"),
            ]
        ),
        {
            "base": keep("parent of image"),
            "mid": keep("parent of image app:1"),
            "leaf": keep("recent"),
        },
    ),
    Scenario(
        "a parent whose child is in use by a container stays",
        snapshot(
            [
                image("base", "base:1", tagged=ago(days=9)),
                image("leaf", "app:1", tagged=ago(days=2), parent="base"),
            ],
            containers=[container("c", "leaf", "running")],
        ),
        {"c": keep("in use"), "base": keep("parent of image app:1"), "leaf": keep("in use by container c")},
    ),
    Scenario(
        "children are deleted before their parents, even when the parent is older",
        snapshot(
            [
                image("base", "base:1", tagged=ago(days=9)),
                image("mid", tagged=ago(days=3), parent="base"),
                image("leaf", "app:1", tagged=ago(days=2), parent="mid"),
                image("unrelated", "x:1", tagged=ago(days=20)),
            ]
        ),
        {
            "base": delete("old"),
            "mid": delete("old"),
            "leaf": delete("old"),
            "unrelated": delete("old"),
        },
        order=("leaf", "mid", "base"),
    ),
    Scenario(
        "an untagged parent stays because of a child kept by keep-recent",
        snapshot(
            [
                image("base", tagged=ago(days=9)),
                image("child", "app:1", tagged=ago(days=2), parent="base"),
            ]
        ),
        {"base": keep("parent of image app:1"), "child": keep("kept recent")},
        policy=Policy(max_age=H6, keep_recent=1),
    ),
    # -- build cache ------------------------------------------------------------------------
    Scenario(
        "build cache: in use never goes, age counts from the last use, unknown age stays",
        snapshot(
            build_cache=[
                record("in-use", last_used=ago(days=9), created=ago(days=9), in_use=True, size=10),
                record("unused-old", last_used=ago(days=2), created=ago(days=3), size=10),
                record("used-recently", last_used=ago(hours=1), created=ago(days=30), size=10),
                record("never-used", last_used=None, created=ago(days=2), size=10),
                record("no-times", size=10),
            ]
        ),
        {
            "in-use": keep("in use"),
            "unused-old": delete("unused", "last used 2d ago"),
            "used-recently": keep("recent", "last used 1h ago"),
            # Without a last use, the creation is the last time it was touched.
            "never-used": delete("unused", "2d"),
            "no-times": keep("age unknown"),
        },
    ),
    Scenario(
        "a cache record whose child stays is kept, up the chain; children go before parents",
        snapshot(
            build_cache=[
                record("root", last_used=ago(days=9)),
                record("kept-parent", last_used=ago(days=9), parent="root"),
                record("busy-child", last_used=ago(days=9), parent="kept-parent", in_use=True),
                record("gone-parent", last_used=ago(days=9), parent="root"),
                record("gone-child", last_used=ago(days=9), parent="gone-parent"),
                record("lone-root", last_used=ago(days=9)),
                record("lone-mid", last_used=ago(days=9), parent="lone-root"),
                record("lone-leaf", last_used=ago(days=9), parent="lone-mid"),
            ]
        ),
        {
            "root": keep("parent of a cache record that stays"),
            "kept-parent": keep("parent of a cache record that stays"),
            "busy-child": keep("in use"),
            "gone-parent": delete("unused"),
            "gone-child": delete("unused"),
            "lone-root": delete("unused"),
            "lone-mid": delete("unused"),
            "lone-leaf": delete("unused"),
        },
        order=("lone-leaf", "lone-mid", "lone-root"),
    ),
    Scenario(
        "under a label scope only cache records holding layers of in-scope images alone are pruned",
        snapshot(
            [
                image(
                    "p1", "p1:1", tagged=ago(days=2), labels={"project": "p1"},
                    layer_list=layers(("base", 333), ("p1-layer", 111)),
                ),
                image(
                    "p2", "p2:1", tagged=ago(hours=1), labels={"project": "p2"},
                    layer_list=layers(("base", 333), ("p2-layer", 222)),
                ),
            ],
            build_cache=[
                record("r-p1", last_used=ago(days=2), shared=True, size=111),
                record("r-p2", last_used=ago(days=2), shared=True, size=222),
                record("r-base", last_used=ago(days=2), shared=True, size=333),
                record("r-private", last_used=ago(days=2), shared=False, size=444),
                record("r-unmatched", last_used=ago(days=2), shared=True, size=555),
            ],
        ),
        {
            "p1": delete("old"),
            "p2": keep("out of scope"),
            "r-p1": delete("unused"),
            "r-p2": keep("out of scope", "outside the scope"),
            "r-base": keep("out of scope", "outside the scope"),
            "r-private": keep("out of scope", "not attributable"),
            "r-unmatched": keep("out of scope", "not attributable"),
        },
        policy=Policy(max_age=H6, keep_recent=0, labels=(LabelSelector("project", "p1"),)),
    ),
    Scenario(
        "under a scope a record whose images a prune deleted is still the scope's: it goes when old",
        snapshot(
            [image("p2", "p2:1", tagged=ago(hours=1), labels={"project": "p2"},
                   layer_list=layers(("p2-layer", 222)))],
            build_cache=[
                record("r-of-deleted-p1", last_used=ago(days=2), shared=True, size=111),
                record("r-of-deleted-p2", last_used=ago(days=2), shared=True, size=333),
                record("r-of-both", last_used=ago(days=2), shared=True, size=444),
                record("r-p2-now", last_used=ago(days=2), shared=True, size=222),
                record("r-unknown", last_used=ago(days=2), shared=True, size=555),
            ],
        ),
        {
            "p2": keep("out of scope"),
            "r-of-deleted-p1": delete("unused"),
            "r-of-deleted-p2": keep("out of scope", "deleted images outside the scope"),
            "r-of-both": keep("out of scope", "deleted images outside the scope"),
            "r-p2-now": keep("out of scope", "holds layers of images outside"),
            "r-unknown": keep("out of scope", "not attributable"),
        },
        policy=Policy(max_age=H6, keep_recent=0, labels=(LabelSelector("project", "p1"),)),
        memory=Memory(cache_owners={
            "r-of-deleted-p1": (CacheOwner(("p1:1",), {"project": "p1"}),),
            "r-of-deleted-p2": (CacheOwner(("p2:0",), {"project": "p2"}),),
            "r-of-both": (CacheOwner(("p1:1",), {"project": "p1"}), CacheOwner((), {})),
            "r-p2-now": (CacheOwner(("p1:1",), {"project": "p1"}),),
        }),
    ),
    Scenario(
        "under a scope a record used after its images were deleted serves someone unknown: it stays",
        snapshot(
            [],
            build_cache=[
                record("r-used-since", last_used=ago(days=2), shared=True, size=111),
                record("r-unused-since", last_used=ago(days=4), shared=True, size=222),
            ],
        ),
        {
            "r-used-since": keep("out of scope", "used since the images it held were deleted"),
            "r-unused-since": delete("unused"),
        },
        policy=Policy(max_age=H6, keep_recent=0, labels=(LabelSelector("project", "p1"),)),
        memory=Memory(cache_owners={
            "r-used-since": (CacheOwner(("p1:1",), {"project": "p1"}, ago(days=3)),),
            "r-unused-since": (CacheOwner(("p1:2",), {"project": "p1"}, ago(days=3)),),
        }),
    ),
    Scenario(
        "without a scope every old unused record is pruned, matched to a layer or not",
        snapshot(
            [image("img", "app:1", tagged=ago(hours=1), layer_list=layers(("base", 333)))],
            build_cache=[
                record("r-base", last_used=ago(days=2), shared=True, size=333),
                record("r-private", last_used=ago(days=2), shared=False, size=444),
            ],
        ),
        {"img": keep("recent"), "r-base": delete("unused"), "r-private": delete("unused")},
    ),
    # -- volumes ----------------------------------------------------------------------------
    Scenario(
        "volumes are never pruned unless asked for",
        snapshot(volumes=[volume(ANON_OLD, created=ago(days=9)), volume("data", created=ago(days=9))]),
        {ANON_OLD: keep("volume pruning is off"), "data": keep("volume pruning is off")},
    ),
    Scenario(
        "anonymous mode prunes unused anonymous volumes only; a volume of a staying container stays",
        snapshot(
            [image("img", "app:1", tagged=ago(hours=1))],
            containers=[
                container("staying", "img", "running", volumes=[ANON_USED]),
                container("leaving", "img", "exited", finished=ago(days=2), volumes=[ANON_FREED]),
            ],
            volumes=[
                volume(ANON_OLD, created=ago(days=9)),
                volume(anonymous_name("new"), created=ago(hours=1)),
                volume(ANON_USED, created=ago(days=9), ref_count=1),
                volume(ANON_FREED, created=ago(days=9), ref_count=1),
                volume(ANON_UNKNOWN, created=ago(days=9), ref_count=-1),
                volume(anonymous_name("no-time"), created=None),
                volume("named", created=ago(days=9)),
            ],
        ),
        {
            "staying": keep("in use"),
            "leaving": delete("stopped"),
            "img": keep("in use by container staying"),
            ANON_OLD: delete("unused", "created 9d ago"),
            anonymous_name("new"): keep("recent"),
            ANON_USED: keep("in use by container staying"),
            ANON_FREED: delete("unused"),
            ANON_UNKNOWN: keep("in use"),
            anonymous_name("no-time"): keep("age unknown"),
            "named": keep("named volume"),
        },
        policy=Policy(max_age=H6, keep_recent=0, volumes=VolumeMode.ANONYMOUS),
        order=("leaving", ANON_FREED),
    ),
    Scenario(
        "all mode prunes unused named volumes too",
        snapshot(volumes=[volume("named", created=ago(days=9))]),
        {"named": delete("unused")},
        policy=Policy(max_age=H6, keep_recent=0, volumes=VolumeMode.ALL),
    ),
    Scenario(
        "volumes belong to no repository, so a repository scope keeps them",
        snapshot(volumes=[volume("named", created=ago(days=9))]),
        {"named": keep("out of scope")},
        policy=Policy(max_age=H6, keep_recent=0, volumes=VolumeMode.ALL, repos=("app",)),
    ),
    # -- negative max age and toggles -------------------------------------------------------
    Scenario(
        "a negative max age makes everything old, even what was used a minute ago",
        snapshot(
            [image("img", "app:1", tagged=ago(minutes=1))],
            containers=[container("c", "gone", "exited", finished=ago(minutes=1))],
            build_cache=[record("r", last_used=ago(minutes=1))],
            volumes=[volume("named", created=ago(minutes=1))],
        ),
        {
            "img": delete("negative max age"),
            "c": delete("negative max age"),
            "r": delete("negative max age"),
            "named": delete("negative max age"),
        },
        policy=Policy(max_age=timedelta(seconds=-1), keep_recent=0, volumes=VolumeMode.ALL),
    ),
    Scenario(
        "a zero max age makes anything older than now old, but not what happens now",
        snapshot(
            [
                image("now", "app:1", tagged=NOW),
                image("second-ago", "app:2", tagged=ago(seconds=1)),
            ]
        ),
        {"now": keep("recent"), "second-ago": delete("old")},
        policy=Policy(max_age=timedelta(0), keep_recent=0),
    ),
    Scenario(
        "each kind can be switched off on its own",
        snapshot(
            [image("img", "app:1", tagged=ago(days=2))],
            containers=[container("c", "gone", "exited", finished=ago(days=2))],
            build_cache=[record("r", last_used=ago(days=2))],
        ),
        {
            "img": keep("image pruning is off"),
            "c": keep("container pruning is off"),
            "r": keep("build-cache pruning is off"),
        },
        policy=Policy(max_age=H6, keep_recent=0, containers=False, images=False, build_cache=False),
    ),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_planner_scenario(scenario: Scenario) -> None:
    result = plan(scenario.snapshot, scenario.policy, scenario.memory, now=NOW)

    decided = {o.id: o for o in result.objects}
    assert sorted(decided) == sorted(scenario.expect), "the plan must list exactly the snapshot's objects"
    problems = []
    for object_id, (decision, *words) in scenario.expect.items():
        planned = decided[object_id]
        if planned.decision is not Decision(decision):
            problems.append(f"{object_id}: expected {decision}, got {planned.decision.value} ({planned.reason})")
        for word in words:
            if word not in planned.reason:
                problems.append(f"{object_id}: reason {planned.reason!r} lacks {word!r}")
    assert not problems, "\n".join(problems)

    deletion_ids = [o.id for o in result.deletions]
    positions = [deletion_ids.index(object_id) for object_id in scenario.order]
    assert positions == sorted(positions), f"deletion order {deletion_ids} breaks {scenario.order}"


def test_scenario_names_are_unique_so_each_reads_as_its_own_sentence() -> None:
    names = [s.name for s in SCENARIOS]
    assert len(names) == len(set(names))


def test_a_run_remembers_whose_layers_the_cache_it_left_held() -> None:
    """owners_left_behind: for each record the run did not delete, the deleted images it held."""
    snap = snapshot(
        [
            image("a", "a:1", tagged=ago(days=2), labels={"project": "p1"}, layer_list=layers(("a-layer", 111))),
            image("b", "b:1", tagged=ago(days=2), layer_list=layers(("b-layer", 222))),
            image("c", "c:1", tagged=ago(hours=1), layer_list=layers(("c-layer", 333))),
        ],
        build_cache=[
            record("r-a", last_used=ago(hours=1), shared=True, size=111),
            record("r-b", last_used=ago(days=2), shared=True, size=222),
            record("r-c", last_used=ago(hours=1), shared=True, size=333),
        ],
    )
    the_plan = plan(snap, Policy(max_age=H6, keep_recent=0), now=NOW)
    assert {o.id for o in the_plan.deletions} == {"a", "b", "r-b"}
    # The run deleted a and b (r-b too): r-a is left holding a's layer; c was not deleted.
    assert owners_left_behind(the_plan, ["a", "b"]) == {"r-a": (CacheOwner(("a:1",), {"project": "p1"}),)}
    assert owners_left_behind(the_plan, []) == {}
    # The plan keeps the ledger the planner built, so a run's end does not build it again; a plan
    # made by hand, without one, gets the same answer from a ledger built then.
    assert the_plan.ledger is not None and the_plan.ledger.record_layer == {"r-a": "a-layer", "r-b": "b-layer",
                                                                            "r-c": "c-layer"}
    assert owners_left_behind(replace(the_plan, ledger=None), ["a", "b"]) == owners_left_behind(the_plan, ["a", "b"])


def test_a_plan_names_the_images_whose_keep_recent_places_decide_others_deletion() -> None:
    """Plan.ranked: in a repository where some old images go, the newest kept for keep-recent
    (a prune made from remembered answers reads them afresh first: executor.ranks_changed)."""
    snap = snapshot([
        image("a1", "app:1", tagged=ago(days=3)),
        image("a2", "app:2", tagged=ago(days=4)),
        image("a3", "app:3", tagged=ago(days=5)),
        image("b1", "lone:1", tagged=ago(days=3)),  # the only old image of its repository: nobody's place
        image("c1", "fresh:1", tagged=ago(hours=1)),  # recent: no place taken
    ])
    the_plan = plan(snap, Policy(max_age=H6, keep_recent=1), now=NOW)
    assert {o.id for o in the_plan.deletions} == {"a2", "a3"}
    assert the_plan.ranked == ("a1",)
    assert plan(snap, Policy(max_age=H6, keep_recent=0), now=NOW).ranked == ()


def _classic_child() -> tuple:
    """A classic build's image app/c:1 on keep/base:1, with two unlisted step images between:
    the nearest holds the base's layer and the first step's."""
    base = image("base", "keep/base:1", tagged=ago(days=9), layer_list=layers(("base", 50)), size=50)
    child = replace(
        image("child", "app/c:1", tagged=ago(days=9), parent="base",
              layer_list=layers(("base", 50), ("one", 30), ("two", 20)), size=100),
        hidden_parents=("step2", "step1"), hidden_parent_layers=2)
    return base, child


def test_unscoped_a_deleted_image_takes_its_unlisted_step_images_and_all_its_own_bytes() -> None:
    base, child = _classic_child()
    the_plan = plan(snapshot(images=[base, child]), Policy(max_age=timedelta(days=1), keep_recent=0,
                                                           exclude=("keep/*",)), now=NOW)
    [planned] = [o for o in the_plan.deletions if o.id == "child"]
    assert planned.hidden_parents == ("step2", "step1")
    assert planned.bytes == 50  # its two layers above the base: the step images go too


def test_unscoped_a_deleted_image_names_no_step_image_an_image_that_stays_builds_on() -> None:
    """From a new user's trial: the plan listed a shared step image among a deleted image's
    untagged parents, and the run then said it stayed (the engine refused: it has a child)."""
    base, child = _classic_child()
    sibling = replace(
        image("sibling", "app/s:1", tagged=ago(minutes=5), parent="base",
              layer_list=layers(("base", 50), ("one", 30), ("three", 5)), size=85),
        hidden_parents=("step3", "step1"), hidden_parent_layers=2)  # recent: stays, on step1 too
    the_plan = plan(snapshot(images=[base, child, sibling]), Policy(max_age=timedelta(days=1), keep_recent=0,
                                                                    exclude=("keep/*",)), now=NOW)
    [planned] = [o for o in the_plan.deletions if o.id == "child"]
    assert planned.hidden_parents == ("step2",)
    assert planned.bytes == 20  # "one" is the sibling's too
    assert "sibling" in {o.id for o in the_plan.kept}


def test_unscoped_a_step_image_a_container_runs_on_stays_with_its_layers() -> None:
    """A review's case: a container that stays runs on a step image (a failed build's step, run
    to debug it). The engine refuses that step; the plan listed it and counted its layers."""
    base, child = _classic_child()
    debugging = container("debug", "step1", "running")
    the_plan = plan(snapshot(images=[base, child], containers=[debugging]),
                    Policy(max_age=timedelta(days=1), keep_recent=0, exclude=("keep/*",)), now=NOW)
    [planned] = [o for o in the_plan.deletions if o.id == "child"]
    assert planned.hidden_parents == ("step2",)
    assert planned.bytes == 20  # at most what the nearest step does not hold: never over


def test_under_repo_a_deleted_image_leaves_its_step_images_and_frees_only_what_they_do_not_hold() -> None:
    base, child = _classic_child()
    the_plan = plan(snapshot(images=[base, child]), Policy(max_age=timedelta(days=1), keep_recent=0,
                                                           repos=("app/*",)), now=NOW)
    [planned] = [o for o in the_plan.deletions if o.id == "child"]
    assert planned.hidden_parents == ()
    assert planned.bytes == 20  # the nearest step image keeps "base" and "one"


def test_under_repo_the_base_of_an_image_whose_step_images_stay_is_kept_whole() -> None:
    base, child = _classic_child()
    base = replace(base, repo_tags=("app/base:1", "app/base:latest"))
    the_plan = plan(snapshot(images=[base, child]), Policy(max_age=timedelta(days=1), keep_recent=0,
                                                           repos=("app/*",)), now=NOW)
    assert {o.id for o in the_plan.deletions} == {"child"}
    [kept] = [o for o in the_plan.kept if o.id == "base"]
    assert kept.reason == "parent of the untagged step images of app/c:1, which stay (untagged, so outside the scope)"


def test_unscoped_the_base_of_an_image_with_step_images_goes_too() -> None:
    base, child = _classic_child()
    base = replace(base, repo_tags=("app/base:1",))
    the_plan = plan(snapshot(images=[base, child]), Policy(max_age=timedelta(days=1), keep_recent=0), now=NOW)
    assert {o.id for o in the_plan.deletions} == {"child", "base"}
