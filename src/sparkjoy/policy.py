"""The pruning policy: what may go, checked once when it is built.

A ``Policy`` is plain data. It validates its own invariants in ``__post_init__`` so a
policy that exists is a policy that makes sense; the config layer turns files, the
environment and flags into one.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import Iterable, Mapping

from .errors import ConfigError
from .model import Image, repository_of


class VolumeMode(str, Enum):
    NONE = "none"  # volumes are never pruned (the default)
    ANONYMOUS = "anonymous"  # unused anonymous volumes older than the max age
    ALL = "all"  # unused volumes, named ones too, older than the max age


@dataclass(frozen=True)
class LabelSelector:
    """``KEY`` (the label is present) or ``KEY=VALUE`` (present with that value)."""

    key: str
    value: str | None = None

    @classmethod
    def parse(cls, text: str) -> "LabelSelector":
        key, sep, value = text.partition("=")
        key = key.strip()
        if not key:
            raise ValueError(f"invalid label selector {text!r}: use KEY or KEY=VALUE")
        return cls(key, value if sep else None)

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        if not labels or self.key not in labels:
            return False
        return self.value is None or labels[self.key] == self.value

    def __str__(self) -> str:
        return self.key if self.value is None else f"{self.key}={self.value}"


def _compile_glob(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def exclude_problem(pattern: str) -> str | None:
    """Given an --exclude glob, return why it can never match, or None when it can.

    Exclusions are matched against REPO:TAG and REPO@DIGEST: a plain name, with no tag, digest
    or wildcard, matches nothing, and the user who wrote "redis" believes redis is protected."""
    if pattern.strip() and not any(c in pattern for c in ":@*?["):
        return (f"exclude pattern {pattern!r} can never match: exclusions are matched against REPO:TAG "
                f"(and REPO@DIGEST); use '{pattern}:*' for every tag of {pattern}")
    return None


@dataclass(frozen=True)
class Policy:
    """What a prune may remove.

    ``max_age``: an object is old when its reference time (last tag or last use for images,
    finish time for containers, last use for build cache, creation for volumes) is older.
    Negative means everything counts as old.
    ``keep_recent``: among old tagged images, the N newest per repository stay.
    ``labels``: every selector must match (scope). ``repos``: any glob matches a repository (scope).
    ``exclude``: any glob matching any ``repo:tag`` (or ``repo@digest``) of an image protects
    it; a plain name, with no tag, digest or wildcard, is refused: it could never match.
    """

    max_age: timedelta = timedelta(hours=6)
    keep_recent: int = 2
    labels: tuple[LabelSelector, ...] = ()
    repos: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    containers: bool = True
    images: bool = True
    build_cache: bool = True
    volumes: VolumeMode = VolumeMode.NONE
    _repo_patterns: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)
    _exclude_patterns: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.max_age, timedelta):
            problems.append(f"max_age must be a duration, got {self.max_age!r}")
        if isinstance(self.keep_recent, bool) or not isinstance(self.keep_recent, int) or self.keep_recent < 0:
            problems.append(f"keep_recent must be a whole number >= 0, got {self.keep_recent!r}")
        for pattern in (*self.repos, *self.exclude):
            if not isinstance(pattern, str) or not pattern.strip():
                problems.append(f"empty or invalid pattern {pattern!r} in repos/exclude")
        problems += [problem for p in self.exclude if isinstance(p, str) and (problem := exclude_problem(p))]
        for toggle in ("containers", "images", "build_cache"):
            # "false" as text is truthy: a toggle that is not a bool would switch pruning on.
            if not isinstance(getattr(self, toggle), bool):
                problems.append(f"{toggle} must be true or false, got {getattr(self, toggle)!r}")
        try:
            # The planner compares modes by identity; "none" as text would prune every volume.
            object.__setattr__(self, "volumes", VolumeMode(self.volumes))
        except ValueError:
            problems.append(f"volumes must be one of none, anonymous, all, got {self.volumes!r}")
        if problems:
            raise ConfigError(problems)
        object.__setattr__(self, "_repo_patterns", tuple(_compile_glob(p) for p in self.repos))
        object.__setattr__(self, "_exclude_patterns", tuple(_compile_glob(p) for p in self.exclude))

    @property
    def everything_old(self) -> bool:
        return self.max_age < timedelta(0)

    @property
    def scoped(self) -> bool:
        """True when the scope is narrower than the whole engine."""
        return bool(self.labels or self.repos)

    def unmatched_repos(self, repositories: Iterable[str]) -> tuple[str, ...]:
        """Given the repositories an engine has, return the --repo globs that match none of them."""
        present = set(repositories)
        return tuple(glob for glob, pattern in zip(self.repos, self._repo_patterns)
                     if not any(pattern.fullmatch(r) for r in present))

    def unmatched_excludes(self, names: Iterable[str]) -> tuple[str, ...]:
        """Given every name the engine's images have (``repo:tag``, ``repo@digest``), return the
        --exclude globs that match none of them: they protect nothing here."""
        present = set(names)
        return tuple(glob for glob, pattern in zip(self.exclude, self._exclude_patterns)
                     if not any(pattern.fullmatch(n) for n in present))

    def labels_match(self, labels: Mapping[str, str] | None) -> bool:
        return all(selector.matches(labels) for selector in self.labels)

    def repo_matches(self, repository: str) -> bool:
        return not self._repo_patterns or any(p.fullmatch(repository) for p in self._repo_patterns)

    def image_in_scope(self, image: Image) -> str | None:
        """Given an image, return None when it is in scope, else the reason it is not."""
        if not self.labels_match(image.labels):
            wanted = ", ".join(str(s) for s in self.labels)
            return f"out of scope: lacks label {wanted}"
        if self._repo_patterns:
            if image.dangling:
                return "out of scope: untagged, so in no repository matching --repo"
            outside = [tag for tag in image.repo_tags if not self.repo_matches(repository_of(tag))]
            if len(outside) == len(image.repo_tags):
                return "out of scope: repository does not match --repo " + " ".join(self.repos)
            if outside:
                # Deleting the image would take a tag outside the scope with it: the image stays whole.
                return f"out of scope: also tagged {outside[0]}, outside --repo " + " ".join(self.repos)
            # So would a digest reference (a pull's) of a repository outside it.
            for digest in image.repo_digests:
                if not self.repo_matches(repository_of(digest)):
                    return f"out of scope: also referenced as {digest}, outside --repo " + " ".join(self.repos)
        return None

    def excluded_by(self, image: Image) -> tuple[str, str] | None:
        """Given an image, return ``(pattern, tag)`` of the first exclusion that protects it."""
        # A digest reference (``repo@sha256:...``, a pull's) is a name of the image too.
        for tag in (*image.repo_tags, *image.repo_digests):
            for pattern, compiled in zip(self.exclude, self._exclude_patterns):
                if compiled.fullmatch(tag):
                    return pattern, tag
        return None
