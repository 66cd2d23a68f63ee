"""Engine JSON -> model values, once, at the edge.

Every converter is defensive: a missing field, a null or a value of the wrong type gives
the safe reading (no time, unknown state, size unknown), which the planner turns into
"keep". Nothing here raises on odd input except for an object without an ID, which is
dropped by the caller.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timezone
from collections.abc import Mapping
from typing import Any, Iterable

from ..model import BuildCacheRecord, Container, ContainerState, Image, Layer, Volume

# The diff ID of an empty layer tarball: a layer of zero bytes.
EMPTY_LAYER_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"


def parse_time(value: Any) -> datetime | None:
    """Given an engine timestamp (RFC 3339 with up to nanoseconds, or unix seconds), return UTC time.

    The zero time (``0001-01-01T00:00:00Z``), 0, negatives, garbage and None all give None.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        if value <= 0:
            return None
        try:
            return datetime.fromtimestamp(value, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value or value.startswith("0001-01-01"):
        return None
    try:
        # Python 3.11's parser reads the engine's own form ("...T10:00:00.123456789Z", the
        # fraction cut to microseconds) at an eighth of the cost of the way below.
        parsed = datetime.fromisoformat(value)
    except ValueError:
        pass
    else:
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=timezone.utc)
        return parsed if parsed.tzinfo is timezone.utc else parsed.astimezone(timezone.utc)
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python's parser takes at most 6 fractional digits; the engine sends 9.
    if "." in text:
        head, _, rest = text.partition(".")
        # Only the digits before the zone: "785614954+02:00" is fraction "785614954", zone "+02:00".
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        zone = rest[len(digits):]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def as_int(value: Any, default: int = -1) -> int:
    if isinstance(value, bool) or value is None:
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):  # not NaN, not 1e400 (infinity)
        return int(value)
    return default


def as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def as_strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str) and v)


def as_labels(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) if v is not None else "" for k, v in value.items()}


def real_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Old engines report dangling images as ``<none>:<none>``: that is no tag."""
    return tuple(t for t in tags if t and t != "<none>:<none>" and not t.startswith("<none>"))


def real_digests(references: Iterable[str]) -> tuple[str, ...]:
    """Old engines report an image without digests as ``<none>@<none>``: that is no reference."""
    return tuple(r for r in references if "@" in r and not r.startswith("<none>"))


def chain_ids(diff_ids: list[str]) -> list[str]:
    """Given a bottom-to-top list of layer diff IDs, return their chain IDs (as the layer store names them)."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(diff_id)
        else:
            digest = hashlib.sha256(f"{chains[-1]} {diff_id}".encode()).hexdigest()
            chains.append(f"sha256:{digest}")
    return chains


# Dockerfile instructions that only change the image config (history step without a layer),
# and those that always make a layer. WORKDIR may or may not make one: unknown.
_CONFIG_ONLY = frozenset({"LABEL", "ENV", "CMD", "ENTRYPOINT", "EXPOSE", "USER", "VOLUME", "STOPSIGNAL",
                          "HEALTHCHECK", "SHELL", "ARG", "ONBUILD", "MAINTAINER"})
_MAKES_LAYER = frozenset({"RUN", "COPY", "ADD"})
_CLASSIC_NOP = "/bin/sh -c #(nop)"


def _step_makes_layer(created_by: Any) -> bool | None:
    """Given a history step's ``CreatedBy``, return True (it made a layer), False (it did not)
    or None (cannot tell).

    BuildKit writes the instruction itself (``RUN /bin/sh -c ...``, ``LABEL a=b``); the classic
    builder writes ``/bin/sh -c #(nop) LABEL a=b`` for config-only steps and COPY/ADD, and the
    bare command for RUN (left unknown)."""
    if not isinstance(created_by, str):
        return None
    text = created_by.strip()
    if text.startswith(_CLASSIC_NOP):
        text = text[len(_CLASSIC_NOP):].strip()
    word = text.split(None, 1)[0] if text else ""
    if word in _MAKES_LAYER:
        return True
    if word in _CONFIG_ONLY:
        return False
    return None


def history_steps(history: Any) -> list[dict] | None:
    """Given an image's history answer, return just what ``layers_from`` reads of it: each
    step's size and the instruction word of its ``CreatedBy`` (never the command itself, which
    can hold build arguments: it is kept on disk by the history cache). None when unreadable.

    Example: ``[{"Size": 5, "CreatedBy": "RUN |1 TOKEN=x /bin/sh -c make"}]`` ->
    ``[{"Size": 5, "CreatedBy": "RUN"}]``.
    """
    if not isinstance(history, list):
        return None
    steps = []
    for step in history:
        if not isinstance(step, Mapping):
            steps.append({})
            continue
        created_by = step.get("CreatedBy")
        word = ""
        if isinstance(created_by, str):
            text = created_by.strip()
            prefix = ""
            if text.startswith(_CLASSIC_NOP):
                prefix, text = _CLASSIC_NOP + " ", text[len(_CLASSIC_NOP):].strip()
            first = text.split(None, 1)[0] if text else ""
            word = prefix + first if first in _MAKES_LAYER or first in _CONFIG_ONLY else prefix
        steps.append({"Size": step.get("Size"), "CreatedBy": word})
    return steps


def _aligned_sizes(sizes: list[int], kinds: list[bool | None], diff_ids: list[str]) -> list[int] | None:
    """Given history step sizes and kinds (oldest first) and the image's diff IDs, return each
    layer's size when only one lining-up of steps and layers fits, else None.

    A step with bytes made a layer; a step of 0 bytes made one if its kind says so, made none
    if its kind says not, and is free otherwise. Free steps fill the layers left over; a sized
    step whose layer index depends on which free steps do gives None (never a guess). Kinds
    that contradict the counts are dropped and the lining-up tried on sizes alone."""
    for hinted in (kinds, [None] * len(kinds)):
        if any(size > 0 and kind is False for size, kind in zip(sizes, hinted)):
            continue
        forced = [size > 0 or kind is True for size, kind in zip(sizes, hinted)]
        free = [size == 0 and kind is None for size, kind in zip(sizes, hinted)]
        need = len(diff_ids) - sum(forced)
        free_after = sum(free)
        if need < 0 or need > free_after:
            continue
        layer_sizes = [0] * len(diff_ids)
        forced_before = free_before = 0
        ambiguous = False
        for size, is_forced, is_free in zip(sizes, forced, free):
            if is_free:
                free_after -= 1
            if size > 0:
                lowest, highest = max(0, need - free_after), min(need, free_before)
                if lowest != highest:
                    ambiguous = True
                    break
                index = forced_before + lowest
                if diff_ids[index] == EMPTY_LAYER_DIFF_ID:
                    ambiguous = True
                    break
                layer_sizes[index] = size
            forced_before += is_forced
            free_before += is_free
        if not ambiguous:
            return layer_sizes
    return None


def layers_from(inspect: Mapping[str, Any] | None, history: Any, image_size: int) -> tuple[Layer, ...]:
    """Given an image's inspect and history answers, return its layers with sizes.

    History lists steps newest first with the size each added; steps that made no layer
    have size 0. When the steps cannot be lined up with the layers exactly (sizes must add
    up to the image's size), return () so the image is accounted as a whole.
    """
    if not isinstance(inspect, Mapping) or not isinstance(history, list):
        return ()
    rootfs = inspect.get("RootFS")
    listed = rootfs.get("Layers") if isinstance(rootfs, Mapping) else None
    # Only a list: a string or a mapping would be read one character or key per layer.
    diff_ids = [d for d in listed if isinstance(d, str)] if isinstance(listed, list) else []
    if not diff_ids:
        return ()
    sizes_oldest_first = [as_int(h.get("Size"), 0) if isinstance(h, Mapping) else 0 for h in reversed(history)]
    nonzero = [s for s in sizes_oldest_first if s > 0]
    non_empty_layers = [i for i, d in enumerate(diff_ids) if d != EMPTY_LAYER_DIFF_ID]
    if len(sizes_oldest_first) == len(diff_ids):
        # One history step per layer (BuildKit, `docker load`): a step of size 0 is a layer of
        # 0 bytes (a RUN that only makes links or directories), not a step without a layer.
        layer_sizes = sizes_oldest_first
    elif len(nonzero) == len(diff_ids):
        layer_sizes = nonzero
    elif len(nonzero) == len(non_empty_layers):
        layer_sizes = [0] * len(diff_ids)
        for index, size in zip(non_empty_layers, nonzero):
            layer_sizes[index] = size
    else:
        # Steps of size 0 both with a layer (a RUN that only makes links) and without one (a
        # LABEL): the step's instruction tells which, when the builder names it.
        kinds = [_step_makes_layer(h.get("CreatedBy") if isinstance(h, Mapping) else None)
                 for h in reversed(history)]
        found = _aligned_sizes(sizes_oldest_first, kinds, diff_ids)
        if found is None:
            return ()
        layer_sizes = found
    if image_size >= 0 and sum(layer_sizes) != image_size:
        return ()
    return tuple(Layer(chain, size) for chain, size in zip(chain_ids(diff_ids), layer_sizes))


def layer_chains(inspect: Mapping[str, Any] | None) -> list[str]:
    """Given an image's inspect answer, return its layers' chain IDs, bottom first."""
    rootfs = inspect.get("RootFS") if isinstance(inspect, Mapping) else None
    listed = rootfs.get("Layers") if isinstance(rootfs, Mapping) else None
    return chain_ids([d for d in listed if isinstance(d, str)] if isinstance(listed, list) else [])


def derived_layers(chains: list[str], image_size: int, shared_size: int, known: Mapping[str, int],
                   held_elsewhere: bool) -> tuple[Layer, ...] | None:
    """Given an image's layers' chain IDs, its size and shared size as the engine lists them,
    layer sizes by chain ID that other images' histories gave, and whether another listed
    image holds the one layer of unknown size, return its layers when that one's size can be
    told, else None (then its own history is read).

    A layer's size belongs to its chain ID, not to an image: each image holding it shows the
    same one. So on a base shared by thousands of images, one history tells the base's layers,
    and each image on it with a single layer of its own needs no history call: that layer is
    what the image's size leaves. Told only when the engine's own split agrees: the known
    layers, all shown by other images, are shared, so they must add up to the image's shared
    size exactly, when no other image holds the remaining layer. A remaining layer another
    image holds is told only for an image of that one layer (a base alone). An engine whose
    sizes do not add up so has its histories read, as before.
    """
    if not chains or image_size < 0 or shared_size < 0:
        return None
    unknown = [index for index, chain in enumerate(chains) if chain not in known]
    if len(unknown) > 1:
        return None
    sizes = [known.get(chain, 0) for chain in chains]
    told = sum(sizes)
    if unknown:
        # A layer another image holds is told only for an image of that one layer: with other
        # layers beside it, all of them shared, the split says nothing about their sizes.
        if held_elsewhere and told:
            return None
        if told > shared_size or (not held_elsewhere and told != shared_size) or told > image_size:
            return None
        sizes[unknown[0]] = image_size - told
    elif told != image_size:
        return None
    return tuple(Layer(chain, size) for chain, size in zip(chains, sizes))


def image_from(summary: Mapping[str, Any], inspect: Mapping[str, Any] | None, layers: tuple[Layer, ...]) -> Image:
    """Given the ``/system/df`` image summary and the image's inspect answer, return an Image."""
    inspect = inspect if isinstance(inspect, Mapping) else {}
    metadata = inspect.get("Metadata")
    last_tag = parse_time(metadata.get("LastTagTime")) if isinstance(metadata, Mapping) else None
    image_id = as_str(summary.get("Id")) or as_str(inspect.get("Id"))
    tags = real_tags(as_strings(inspect.get("RepoTags")) or as_strings(summary.get("RepoTags")))
    labels = as_labels(summary.get("Labels"))
    if not labels:
        config = inspect.get("Config")
        labels = as_labels(config.get("Labels")) if isinstance(config, Mapping) else {}
    return Image(
        id=image_id,
        repo_tags=tags,
        created=parse_time(inspect.get("Created")) or parse_time(summary.get("Created")),
        last_tag_time=last_tag,
        size=as_int(summary.get("Size"), as_int(inspect.get("Size"), 0)),
        shared_size=as_int(summary.get("SharedSize"), -1),
        labels=labels,
        parent_id=as_str(inspect.get("Parent")) or as_str(summary.get("ParentId")),
        repo_digests=as_strings(summary.get("RepoDigests")),
        layers=layers,
    )


def container_from(summary: Mapping[str, Any], inspect: Mapping[str, Any] | None) -> Container:
    """Given the ``/system/df`` (or list) container summary and, for stopped ones, the inspect answer."""
    inspect = inspect if isinstance(inspect, Mapping) else {}
    state_text = as_str(summary.get("State")).lower()
    inspected_state = inspect.get("State")
    if isinstance(inspected_state, Mapping) and isinstance(inspected_state.get("Status"), str):
        state_text = inspected_state["Status"].lower()
    try:
        state = ContainerState(state_text)
    except ValueError:
        state = ContainerState.UNKNOWN
    finished = parse_time(inspected_state.get("FinishedAt")) if isinstance(inspected_state, Mapping) else None
    names = tuple(n.lstrip("/") for n in as_strings(summary.get("Names")))
    mounts = summary.get("Mounts")
    volumes = tuple(
        m["Name"]
        for m in (mounts if isinstance(mounts, list) else [])
        if isinstance(m, Mapping) and m.get("Type") == "volume" and isinstance(m.get("Name"), str)
    )
    return Container(
        id=as_str(summary.get("Id")),
        names=names,
        image_id=as_str(summary.get("ImageID")),
        image_ref=as_str(summary.get("Image")),
        state=state,
        created=parse_time(summary.get("Created")),
        finished=finished,
        size_rw=as_int(summary.get("SizeRw"), 0),
        labels=as_labels(summary.get("Labels")),
        volumes=volumes,
    )


def build_cache_from(entry: Mapping[str, Any]) -> BuildCacheRecord:
    parents = entry.get("Parents")
    parent = as_str(entry.get("Parent")) or (as_strings(parents)[0] if as_strings(parents) else "")
    in_use = entry.get("InUse")
    shared = entry.get("Shared")
    return BuildCacheRecord(
        id=as_str(entry.get("ID")),
        parent=parent,
        type=as_str(entry.get("Type")),
        description=as_str(entry.get("Description")),
        # Unknown means in use and shared: the safe readings.
        in_use=in_use if isinstance(in_use, bool) else True,
        shared=shared if isinstance(shared, bool) else True,
        size=max(as_int(entry.get("Size"), 0), 0),
        created=parse_time(entry.get("CreatedAt")),
        last_used=parse_time(entry.get("LastUsedAt")),
        usage_count=as_int(entry.get("UsageCount"), 0),
    )


def volume_from(entry: Mapping[str, Any]) -> Volume:
    usage = entry.get("UsageData")
    usage = usage if isinstance(usage, Mapping) else {}
    return Volume(
        name=as_str(entry.get("Name")),
        driver=as_str(entry.get("Driver")),
        created=parse_time(entry.get("CreatedAt")),
        size=as_int(usage.get("Size"), -1),
        ref_count=as_int(usage.get("RefCount"), -1),
        labels=as_labels(entry.get("Labels")),
    )


def event_object_id(event: Mapping[str, Any]) -> Any:
    """Given one decoded engine event, return the id of the object it is about, as the engine
    gave it (``id``, else ``Actor.ID``; "" when neither): the caller checks its type."""
    actor = event.get("Actor") if isinstance(event.get("Actor"), Mapping) else {}
    return event.get("id") or actor.get("ID") or ""


def event_anchor(event: Any) -> str | None:
    """Given one decoded engine event, return what identifies it in the engine's buffer of recent
    events (``"timeNano Type Action id"``), or None when it has no usable time."""
    if not isinstance(event, Mapping):
        return None
    nanos = event.get("timeNano")
    if not isinstance(nanos, int) or isinstance(nanos, bool) or nanos <= 0:
        return None
    return f"{nanos} {event.get('Type')} {event.get('Action')} {event_object_id(event)}"


def changed_object(event: Any) -> str | None | bool:
    """Given one decoded engine event, return the id of the image or container it changed,
    None when it changed an image it names only by reference (a pull of ``app:1``), or
    False when it changed neither. What a remembered inspect must be forgotten for.

    Example: ``{"Type": "image", "Action": "tag", "id": "sha256:ab"}`` -> ``"sha256:ab"``.
    """
    if not isinstance(event, Mapping):
        return None  # unreadable: anything may have changed
    kind = event.get("Type")
    if kind not in ("image", "container"):
        return False
    object_id = event_object_id(event)
    if not isinstance(object_id, str) or not object_id:
        return None
    if kind == "image" and not object_id.startswith("sha256:"):
        return None
    return object_id


# The key under which an image's layers, once told, are kept with its remembered inspect: an
# image ID's layers never change, so a later snapshot needs neither its history nor the sums.
TOLD_LAYERS = "SparkjoyLayers"


def told_layers(inspect: Mapping[str, Any]) -> tuple[Layer, ...] | None:
    """Given a remembered inspect, return the layers told for it earlier (None: none, or unreadable)."""
    kept = inspect.get(TOLD_LAYERS)
    if not isinstance(kept, list):
        return None
    layers = []
    for pair in kept:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
                and isinstance(pair[1], int) and not isinstance(pair[1], bool) and pair[1] >= 0):
            return None
        layers.append(Layer(pair[0], pair[1]))
    return tuple(layers)


def with_told_layers(inspect: Mapping[str, Any], layers: tuple[Layer, ...]) -> dict[str, Any]:
    """Given a remembered inspect and the layers told for its image, return a new inspect that
    keeps them, for ``told_layers`` (new: the state database writes only inspects that changed)."""
    return {**inspect, TOLD_LAYERS: [[layer.chain_id, layer.size] for layer in layers]}


# What `image_from` and `layers_from` read of an image's inspect: all a remembered inspect keeps
# (the daemon's, in memory, and the one-shot commands', in the state database). Config is
# left out but for its labels: it holds the image's environment, which may hold secrets.
def container_inspect_essentials(inspect: Any) -> Any:
    """Given a stopped container's inspect answer, return only what ``container_from`` reads of
    it, its state and when it finished (not a mapping: as is). Never its config: that holds the
    container's environment, which may hold secrets."""
    if not isinstance(inspect, Mapping):
        return inspect
    kept: dict[str, Any] = {key: inspect[key] for key in ("Id",) if key in inspect}
    state = inspect.get("State")
    if isinstance(state, Mapping):
        kept["State"] = {key: state[key] for key in ("Status", "FinishedAt") if key in state}
    return kept


def image_inspect_essentials(inspect: Any) -> Any:
    """Given an image's inspect answer, return only the fields sparkjoy reads (not a mapping: as is)."""
    if not isinstance(inspect, Mapping):
        return inspect
    kept = {key: inspect[key] for key in ("Id", "RepoTags", "Created", "Size", "Parent") if key in inspect}
    metadata = inspect.get("Metadata")
    if isinstance(metadata, Mapping) and "LastTagTime" in metadata:
        kept["Metadata"] = {"LastTagTime": metadata["LastTagTime"]}
    rootfs = inspect.get("RootFS")
    if isinstance(rootfs, Mapping) and "Layers" in rootfs:
        kept["RootFS"] = {"Layers": rootfs["Layers"]}
    config = inspect.get("Config")
    if isinstance(config, Mapping) and config.get("Labels"):
        kept["Config"] = {"Labels": config["Labels"]}
    return kept
