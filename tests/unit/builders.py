"""Small builders of synthetic snapshots for the pure core's tests (no engine).

Every builder takes only what a test cares about and fills the rest with values that do
not influence a decision: times are given as "how long before NOW", sizes default to 0.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterable, Mapping

from sparkjoy.model import (
    BuildCacheRecord,
    Container,
    ContainerState,
    Image,
    Layer,
    Snapshot,
    Volume,
)

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


def ago(*, days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0) -> datetime:
    """Given a distance in the past, return the moment that long before NOW."""
    return NOW - timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def layers(*pairs: tuple[str, int]) -> tuple[Layer, ...]:
    """Given ``("base", 50), ("app", 3)``, return layers whose chain IDs encode their ancestry.

    A chain ID names a layer *on its parents*, so ``layers(("base", 50), ("app", 3))``
    gives chain IDs ``"base"`` and ``"base/app"``; another image starting with
    ``("base", 50)`` shares the first layer.
    """
    result: list[Layer] = []
    chain = ""
    for name, size in pairs:
        chain = f"{chain}/{name}" if chain else name
        result.append(Layer(chain, size))
    return tuple(result)


def image(
    image_id: str,
    *tags: str,
    tagged: datetime | None = None,
    created: datetime | None = None,
    labels: Mapping[str, str] | None = None,
    parent: str = "",
    layer_list: Iterable[Layer] = (),
    size: int | None = None,
    shared_size: int = 0,
) -> Image:
    layer_tuple = tuple(layer_list)
    return Image(
        id=image_id,
        repo_tags=tuple(tags),
        created=created if created is not None else tagged,
        last_tag_time=tagged,
        size=size if size is not None else sum(layer.size for layer in layer_tuple),
        shared_size=shared_size,
        labels=dict(labels or {}),
        parent_id=parent,
        layers=layer_tuple,
    )


def container(
    container_id: str,
    image_id: str,
    state: ContainerState | str = ContainerState.EXITED,
    *,
    created: datetime | None = None,
    finished: datetime | None = None,
    labels: Mapping[str, str] | None = None,
    volumes: Iterable[str] = (),
    size_rw: int = 0,
    name: str | None = None,
) -> Container:
    return Container(
        id=container_id,
        names=(name if name is not None else container_id,),
        image_id=image_id,
        image_ref=image_id,
        state=ContainerState(state),
        created=created,
        finished=finished,
        size_rw=size_rw,
        labels=dict(labels or {}),
        volumes=tuple(volumes),
    )


def record(
    record_id: str,
    *,
    last_used: datetime | None = None,
    created: datetime | None = None,
    in_use: bool = False,
    shared: bool = False,
    size: int = 0,
    parent: str = "",
) -> BuildCacheRecord:
    return BuildCacheRecord(
        id=record_id,
        parent=parent,
        type="regular",
        description="",
        in_use=in_use,
        shared=shared,
        size=size,
        created=created,
        last_used=last_used,
        usage_count=1,
    )


def anonymous_name(seed: str) -> str:
    """Given any text, return a volume name the engine would call anonymous (64 hex digits)."""
    digits = "".join(f"{ord(ch):02x}" for ch in seed)
    return (digits + "0" * 64)[:64]


def volume(
    name: str,
    *,
    created: datetime | None = None,
    size: int = 0,
    ref_count: int = 0,
    labels: Mapping[str, str] | None = None,
) -> Volume:
    return Volume(
        name=name,
        driver="local",
        created=created,
        size=size,
        ref_count=ref_count,
        labels=dict(labels or {}),
    )


def snapshot(
    images: Iterable[Image] = (),
    containers: Iterable[Container] = (),
    build_cache: Iterable[BuildCacheRecord] = (),
    volumes: Iterable[Volume] = (),
    layers_size: int | None = None,
) -> Snapshot:
    """Given objects, return a snapshot; ``layers_size`` defaults to every distinct layer once."""
    image_tuple = tuple(images)
    if layers_size is None:
        distinct = {layer.chain_id: layer.size for i in image_tuple for layer in i.layers}
        layerless = sum(max(i.size - max(i.shared_size, 0), 0) for i in image_tuple if not i.layers)
        layers_size = sum(distinct.values()) + layerless
    return Snapshot(
        taken_at=NOW,
        images=image_tuple,
        containers=tuple(containers),
        build_cache=tuple(build_cache),
        volumes=tuple(volumes),
        layers_size=layers_size,
    )
