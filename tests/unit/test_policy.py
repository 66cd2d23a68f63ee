"""The policy: label selectors, globs and the invariants checked when a policy is built."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sparkjoy.errors import ConfigError
from sparkjoy.planner import Decision, plan
from sparkjoy.policy import LabelSelector, Policy, VolumeMode

from .builders import NOW, ago, container, image, snapshot, volume


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("project", "project", None),
        ("project=p1", "project", "p1"),
        ("project=", "project", ""),
        ("a=b=c", "a", "b=c"),
        (" project =p1", "project", "p1"),
        ("com.example.team=web", "com.example.team", "web"),
    ],
)
def test_a_label_selector_is_key_or_key_equals_value(text: str, key: str, value: str | None) -> None:
    selector = LabelSelector.parse(text)
    assert (selector.key, selector.value) == (key, value)


@pytest.mark.parametrize("text", ["", "=p1", "   ", " =x"])
def test_a_label_selector_without_a_key_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="KEY or KEY=VALUE"):
        LabelSelector.parse(text)


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("team", {"team": "x"}, True),
        ("team", {"team": ""}, True),
        ("team", {"other": "team"}, False),
        ("team=x", {"team": "x"}, True),
        ("team=x", {"team": "y"}, False),
        ("team=", {"team": ""}, True),
        ("team=", {"team": "x"}, False),
        ("team", None, False),
        ("team", {}, False),
    ],
)
def test_a_label_selector_matches_presence_or_exact_value(selector: str, labels, matches: bool) -> None:
    assert LabelSelector.parse(selector).matches(labels) is matches


@pytest.mark.parametrize("text", ["team", "team=x", "team="])
def test_a_label_selector_prints_as_it_was_written(text: str) -> None:
    assert str(LabelSelector.parse(text)) == text


def test_the_default_policy_is_the_articles() -> None:
    policy = Policy()
    assert policy.max_age == timedelta(hours=6)
    assert policy.keep_recent == 2
    assert policy.volumes is VolumeMode.NONE
    assert not policy.scoped and not policy.everything_old


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        ({"keep_recent": -1}, "keep_recent"),
        ({"keep_recent": True}, "keep_recent"),
        ({"keep_recent": 1.5}, "keep_recent"),
        ({"max_age": "6h"}, "max_age"),
        ({"max_age": 3600}, "max_age"),
        ({"repos": ("",)}, "pattern"),
        ({"exclude": ("  ",)}, "pattern"),
        ({"exclude": ("redis",)}, "'redis' can never match.*'redis:\\*'"),
        ({"volumes": "some"}, "volumes"),
        ({"containers": "false"}, "containers"),
        ({"images": None}, "images"),
        ({"build_cache": 1}, "build_cache"),
    ],
)
def test_a_policy_that_makes_no_sense_cannot_be_built(arguments: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Policy(**arguments)


def test_every_problem_of_a_policy_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        Policy(max_age="6h", keep_recent=-1, exclude=("",))
    assert len(caught.value.problems) == 3


@pytest.mark.parametrize("mode", ["none", "anonymous", "all"])
def test_a_volume_mode_given_by_its_name_is_that_mode(mode: str) -> None:
    assert Policy(volumes=mode).volumes is VolumeMode(mode)


def test_a_policy_built_with_volumes_none_as_text_prunes_no_volume() -> None:
    # VolumeMode is a str enum: "none" == VolumeMode.NONE, but the planner compares by identity.
    shot = snapshot(volumes=[volume("named", created=ago(days=9))])
    result = plan(shot, Policy(max_age=timedelta(hours=6), volumes="none"), now=NOW)
    assert [o.decision for o in result.objects] == [Decision.KEEP]


@pytest.mark.parametrize(
    ("max_age", "everything_old"),
    [(timedelta(seconds=-1), True), (timedelta(0), False), (timedelta(hours=6), False)],
)
def test_only_a_negative_max_age_makes_everything_old(max_age: timedelta, everything_old: bool) -> None:
    assert Policy(max_age=max_age).everything_old is everything_old


@pytest.mark.parametrize(
    ("patterns", "repository", "matches"),
    [
        ((), "anything", True),
        (("app",), "app", True),
        (("app",), "app2", False),
        (("app",), "my/app", False),
        (("p1/*",), "p1/web", True),
        (("p1/*",), "p1/a/b", True),
        (("p1/*",), "xp1/web", False),
        (("reg:5000/*",), "reg:5000/app", True),
        (("w?b", "api"), "web", True),
        (("[ab]pp",), "bpp", True),
    ],
)
def test_a_repository_glob_must_match_the_whole_repository(patterns, repository: str, matches: bool) -> None:
    assert Policy(repos=patterns).repo_matches(repository) is matches


def test_an_exclusion_names_the_pattern_and_the_tag_that_matched() -> None:
    policy = Policy(exclude=("nomatch:*", "redis:*"))
    assert policy.excluded_by(image("i", "app:1", "redis:7")) == ("redis:*", "redis:7")
    assert policy.excluded_by(image("i", "myredis:7")) is None
    assert policy.excluded_by(image("i")) is None


def test_an_image_is_in_scope_only_with_every_label_and_a_matching_repository() -> None:
    policy = Policy(labels=(LabelSelector("project", "p1"),), repos=("p1/*",))
    assert policy.image_in_scope(image("i", "p1/web:1", labels={"project": "p1"})) is None
    assert "lacks label project=p1" in policy.image_in_scope(image("i", "p1/web:1"))
    assert "repository" in policy.image_in_scope(image("i", "p2/web:1", labels={"project": "p1"}))
    assert "untagged" in policy.image_in_scope(image("i", labels={"project": "p1"}))


def test_a_container_of_an_image_outside_the_repository_scope_is_out_of_scope() -> None:
    shot = snapshot(
        [image("mine", "p1/web:1", tagged=ago(hours=1)), image("theirs", "p2/web:1", tagged=ago(hours=1))],
        containers=[
            container("c-mine", "mine", "exited", finished=ago(days=2)),
            container("c-theirs", "theirs", "exited", finished=ago(days=2)),
        ],
    )
    result = plan(shot, Policy(max_age=timedelta(hours=6), repos=("p1/*",)), now=NOW)
    decided = {o.id: o for o in result.objects}
    assert decided["c-mine"].decision is Decision.DELETE
    assert decided["c-theirs"].decision is Decision.KEEP and "out of scope" in decided["c-theirs"].reason


def test_the_repo_globs_that_match_no_repository_are_named() -> None:
    policy = Policy(repos=("shop", "shop/*", "[", "other/web"))
    assert policy.unmatched_repos(["shop/web", "shop/worker", "base"]) == ("shop", "[", "other/web")
    assert Policy(repos=("shop/*",)).unmatched_repos(["shop/web"]) == ()
    assert Policy().unmatched_repos([]) == ()


def test_a_digest_of_a_repository_outside_repo_puts_the_image_out_of_scope() -> None:
    from sparkjoy.model import Image

    policy = Policy(repos=("app/*",))
    inside = Image("i", ("app/x:1",), None, None, 0, 0, repo_digests=("app/x@sha256:" + "1" * 64,))
    outside = Image("o", ("app/x:2",), None, None, 0, 0, repo_digests=("reg:5000/mirror@sha256:" + "2" * 64,))
    assert policy.image_in_scope(inside) is None
    assert policy.image_in_scope(outside) == (
        "out of scope: also referenced as reg:5000/mirror@sha256:" + "2" * 64 + ", outside --repo app/*")


def test_an_exclusion_matches_a_digest_reference_too() -> None:
    from sparkjoy.model import Image

    image = Image("i", ("app/x:1",), None, None, 0, 0, repo_digests=("keep/mirror@sha256:" + "3" * 64,))
    assert Policy(exclude=("keep/*",)).excluded_by(image) == ("keep/*", "keep/mirror@sha256:" + "3" * 64)
    assert Policy(exclude=("other/*",)).excluded_by(image) is None


def test_an_exclude_of_a_plain_name_is_refused_and_one_that_can_match_a_name_is_not() -> None:
    # Exclusions are matched against REPO:TAG and REPO@DIGEST: "redis" alone matches neither.
    for pattern in ("redis:*", "redis*", "redis@sha256:*", "*", "reg?", "[r]edis:7"):
        assert Policy(exclude=(pattern,)).exclude == (pattern,)


def test_the_exclude_globs_that_match_no_image_name_are_named() -> None:
    policy = Policy(exclude=("redis:*", "postgres:*", "keep/*"))
    names = ["redis:7", "keep/mirror@sha256:" + "3" * 64]
    assert policy.unmatched_excludes(names) == ("postgres:*",)
    assert Policy().unmatched_excludes(names) == ()
