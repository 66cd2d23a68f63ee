"""The engine interface: the questions the executor and daemon ask, and the deletions they make.

The executor, daemon and reports depend on this, never on the Docker SDK, so they can be
exercised with a recording fake in fast tests while the real thing is proven against a
real engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ..model import Container, Snapshot


@dataclass(frozen=True)
class ImageState:
    """An image as it is right now, for the re-check before deleting it."""

    id: str
    repo_tags: tuple[str, ...]
    # When it was last tagged (None when the engine does not say): a newer time than the
    # plan's means it was tagged again, e.g. by a rebuild that hit the cache.
    last_tag_time: datetime | None = None
    # Its digest references (``repo@sha256:...``, left by a pull): names too, which the engine
    # removes with the image, but no tags (a digest cannot move to another image).
    repo_digests: tuple[str, ...] = ()


@dataclass(frozen=True)
class EventMark:
    """Where in the engine's event log a run ended: the engine's clock then (unix nanoseconds),
    from which the events say what changed since, and the newest event the run read
    (``"timeNano Type Action id"``), which the next run must find again: if it is gone, the
    engine lost its event buffer (a restart), or the engine behind the address changed."""

    since_nanos: int
    anchor: str | None = None
    # The engine's ID and data root (GET /info): another engine behind the address differs.
    engine: str = ""

    @property
    def start_nanos(self) -> int:
        """Where the next run reads from: the anchor's time when there is one, so that the answer
        holds the anchor itself (0, the whole buffer, for an anchor that cannot be read)."""
        if not self.anchor:
            return self.since_nanos
        nanos = self.anchor.split(" ", 1)[0]
        return min(int(nanos), self.since_nanos) if nanos.isdigit() else 0


class Engine(Protocol):
    host: str

    def ping(self) -> None:
        """Raise EngineUnreachable unless the engine answers."""

    def snapshot(self) -> Snapshot:
        """Read everything the planner needs, converted to model values."""

    def usage(self) -> int:
        """Bytes the engine uses right now, each byte once (see sparkjoy.usage.engine_usage)."""

    def image_state(self, image_id: str) -> ImageState | None:
        """The image's current tags, or None when it is gone."""

    def containers_of_image(self, image_id: str) -> list[Container]:
        """Containers in any state whose image is this one (re-check before untagging)."""

    def untag(self, tag: str) -> list[dict]:
        """Remove one tag or digest reference (never forced, never its parents). Returns the
        engine's Untagged/Deleted entries."""

    def delete_image(self, image_id: str) -> list[dict]:
        """Delete an image by ID with its last references (never forced, never its parents)."""

    def tags_put(self, names: set[str], within_s: float) -> dict[str, set[str]]:
        """Of these tag names, those put on an image in the last ``within_s`` seconds (the
        engine's events), each with the IDs of the images it was put on."""

    def container_state(self, container_id: str) -> Container | None:
        """The container as it is now, or None when it is gone."""

    def remove_container(self, container_id: str) -> None:
        """Remove a stopped container (never forced; its volumes stay)."""

    def prune_build_cache_record(self, record_id: str) -> tuple[bool, int]:
        """Prune exactly one cache record. Returns (deleted, bytes the engine says it reclaimed)."""

    def volume_exists(self, name: str) -> bool:
        """True when the volume still exists."""

    def remove_volume(self, name: str) -> None:
        """Remove a volume (never forced)."""
