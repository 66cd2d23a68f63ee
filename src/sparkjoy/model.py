"""What the engine reports, as immutable values.

The engine layer converts the engine's JSON into these types once; nothing past it
sees a raw dict. Times are timezone-aware UTC datetimes, and a timestamp the engine
reports as zero or absent is ``None``: a missing time never means "old".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Mapping


class Kind(str, Enum):
    """The kinds of object sparkjoy accounts for and prunes, in deletion order."""

    CONTAINER = "container"
    IMAGE = "image"
    BUILD_CACHE = "build-cache"
    VOLUME = "volume"


@dataclass(frozen=True, slots=True)
class Layer:
    """One image layer, identified by its chain ID (so equal content on equal parents is one layer)."""

    chain_id: str
    size: int


@dataclass(frozen=True, slots=True)
class Image:
    id: str
    repo_tags: tuple[str, ...]
    created: datetime | None
    last_tag_time: datetime | None
    size: int
    shared_size: int
    labels: Mapping[str, str] = field(default_factory=dict)
    parent_id: str = ""
    repo_digests: tuple[str, ...] = ()
    # The untagged images between it and ``parent_id`` that the engine does not list (a classic
    # build's step images, an old base whose tag moved), nearest first: ``parent_id`` is the
    # nearest listed ancestor.
    hidden_parents: tuple[str, ...] = ()
    # How many of its bottom layers the nearest of those holds (0: none, or not known).
    hidden_parent_layers: int = 0
    # Bottom-to-top layers with their sizes; empty when the engine did not tell us
    # (then the image is accounted as a whole: see sparkjoy.usage).
    layers: tuple[Layer, ...] = ()

    @property
    def dangling(self) -> bool:
        return not self.repo_tags

    @property
    def repositories(self) -> tuple[str, ...]:
        """Given tags like ``app:1`` and ``reg:5000/app:2``, return ``("app", "reg:5000/app")``."""
        seen: list[str] = []
        for tag in self.repo_tags:
            repo = repository_of(tag)
            if repo not in seen:
                seen.append(repo)
        return tuple(seen)

    @property
    def short_id(self) -> str:
        return short_id(self.id)


def repository_of(tag: str) -> str:
    """Given ``registry:5000/app:1.2``, return ``registry:5000/app`` (the colon of a port is not a tag)."""
    if "@" in tag:
        return tag.split("@", 1)[0]
    slash = tag.rfind("/")
    colon = tag.rfind(":")
    if colon > slash:
        return tag[:colon]
    return tag


def short_id(object_id: str) -> str:
    return object_id.split(":", 1)[-1][:12]


class ContainerState(str, Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    REMOVING = "removing"
    EXITED = "exited"
    DEAD = "dead"
    # Anything the engine reports that we do not know is treated as in use.
    UNKNOWN = "unknown"

    @property
    def stopped(self) -> bool:
        """Stopped containers can be removed without force; the others are in use."""
        return self in (ContainerState.CREATED, ContainerState.EXITED, ContainerState.DEAD)


@dataclass(frozen=True, slots=True)
class Container:
    id: str
    names: tuple[str, ...]
    image_id: str
    image_ref: str
    state: ContainerState
    created: datetime | None
    finished: datetime | None
    size_rw: int
    labels: Mapping[str, str] = field(default_factory=dict)
    volumes: tuple[str, ...] = ()

    @property
    def short_id(self) -> str:
        return short_id(self.id)


@dataclass(frozen=True, slots=True)
class BuildCacheRecord:
    id: str
    parent: str
    type: str
    description: str
    in_use: bool
    shared: bool
    size: int
    created: datetime | None
    last_used: datetime | None
    usage_count: int

    @property
    def short_id(self) -> str:
        return self.id[:12]


@dataclass(frozen=True, slots=True)
class Volume:
    name: str
    driver: str
    created: datetime | None
    size: int  # -1 when the engine does not know
    ref_count: int  # containers using it; -1 when unknown
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def anonymous(self) -> bool:
        """Docker names anonymous volumes with 64 hex digits."""
        return len(self.name) == 64 and all(c in "0123456789abcdef" for c in self.name)


@dataclass(frozen=True)
class Snapshot:
    """Everything sparkjoy knows about an engine at one moment."""

    taken_at: datetime
    images: tuple[Image, ...]
    containers: tuple[Container, ...]
    build_cache: tuple[BuildCacheRecord, ...]
    volumes: tuple[Volume, ...]
    # The engine's own figure for bytes used by image layers (each layer once).
    layers_size: int
    api_version: str = ""
    engine_version: str = ""
    # False when the engine has no build cache API (old engines, Podman).
    build_cache_supported: bool = True

    def image(self, image_id: str) -> Image | None:
        for image in self.images:
            if image.id == image_id:
                return image
        return None
