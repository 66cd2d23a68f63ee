"""Size accounting: which bytes a set of deletions really frees.

Docker stores each image layer once, however many images use it, and BuildKit's cache
records can hold the very same layers. Summing image sizes therefore over-counts, and
deleting an image whose layers a cache record still holds frees nothing until that
record goes too. This module models every byte with the set of objects holding it:

- each layer (by chain ID) is held by the images that contain it and by the build-cache
  records whose snapshot it is;
- an unshared build-cache record, a container's writable layer and a volume hold their
  own bytes alone.

Bytes are freed when every holder is deleted. ``LayerLedger.freed`` answers "if these
objects are deleted, in this order, which bytes go, and which object frees them?".

Matching cache records to layers: the engine's API does not say which layer a record
holds. A shared record's ``Size`` equals the size of the layer it holds (observed on
Engine 20.10, where both come from the same diff), so a shared record is matched to a
layer of equal size, preferring the layer whose parent is held by the record's parent; when
several layers still fit (a version-bump rebuild makes layers of one size), the record is not
guessed: it counts as a possible holder of each of them, so deleting those images alone is
predicted to free nothing now (the bytes are "held by cache"), never bytes a record keeps.
A shared record that matches no layer is treated as sharing its bytes with something
that stays: it is predicted to free nothing.

An image the engine gave no layer detail for (its history did not fit its layers) is counted
as a whole: its unique part (size minus the engine's shared size) is its own. Its shared part
may be any detailed image's layer: it counts among the holders of every shared layer no
larger than its shared size, and a detailed image never holds alone more than the engine's
own unique figure for it allows; the rest is held by it and every such image. An image listed
twice counts once, as first listed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import count, islice, repeat
from operator import attrgetter
from typing import Iterable, Sequence

from .model import BuildCacheRecord, Image, Kind, Snapshot

ObjectKey = tuple[Kind, str]

# Past this many images without layer detail that share bytes, the bytes a detailed image may
# share with one of them are never predicted freed, rather than held by all of them (a holding
# per detailed image, each listing every such image, would grow with the square of the count).
_UNSEEN_HOLDERS_LIMIT = 32


def engine_usage(snapshot: Snapshot) -> int:
    """Given a snapshot, return the bytes the engine uses on disk, each byte once.

    Image layers once each (the engine's own ``LayersSize``), build-cache records that share
    nothing with an image, containers' writable layers, and volumes of known size.
    Comparing this figure before and after a prune measures what the prune reclaimed.
    """
    cache = sum(r.size for r in snapshot.build_cache if not r.shared and r.size > 0)
    containers = sum(c.size_rw for c in snapshot.containers if c.size_rw > 0)
    volumes = sum(v.size for v in snapshot.volumes if v.size > 0)
    return snapshot.layers_size + cache + containers + volumes


@dataclass(frozen=True)
class Freed:
    """What deleting a set of objects frees.

    ``by_object``: bytes freed now, attributed to the object whose deletion frees them
    (the last of their holders to go); every deletion once, in deletion order. ``held_by_cache``: bytes of deleted images that a
    build-cache record outside the deletion set still holds, per image.
    """

    by_object: dict[ObjectKey, int] = field(default_factory=dict)
    held_by_cache: dict[ObjectKey, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.by_object.values())

    @property
    def total_held_by_cache(self) -> int:
        return sum(self.held_by_cache.values())


class LayerLedger:
    """Every byte of a snapshot with the objects that hold it. Built once per snapshot.

    Bytes one object holds alone (most of them: an image's own layers, an unshared cache
    record, a writable layer, a volume) are summed per object in ``_own``: deleting that
    object frees them, whenever it goes. Bytes several objects hold are holdings:
    ``_sizes[i]`` bytes held by the distinct objects ``_holders[i]`` (parallel lists, not an
    object per holding). Holders are a tuple, not a set: a set costs four times the
    memory.
    """

    def __init__(self, snapshot: Snapshot):
        self._sizes: list[int] = []
        self._holders: list[tuple[ObjectKey, ...]] = []
        # How many of each holding's holders are images: they come first, build-cache records after.
        self._image_holders: list[int] = []
        # Bytes each object holds alone: the ledger keeps this very dict (no copy of it).
        own: dict[ObjectKey, int] = {}
        # chain id -> its size, the chain id below it and the first image showing it (first
        # sighting wins), in the order first seen; and chain id -> the images showing it after
        # that one, for a layer shown more than once. One entry per layer at first sight, a list
        # only for the shared ones.
        first: dict[str, tuple[int, str, ObjectKey]] = {}
        more: dict[str, list[ObjectKey]] = {}
        image_kind = Kind.IMAGE
        # The images with layer detail; and those without it that share bytes, with their
        # shared size (-1: unknown): they may hold any layer of the others (see the pass over shared
        # layers below, and _share_with_unseen_images).
        detailed: list[Image] = []
        unseen: list[tuple[ObjectKey, int]] = []
        opaque: list[ObjectKey] = []  # the images without layer detail with a unique part

        # One key tuple per image, shared by its holdings, made in C; an image listed again: its
        # first listing counts, once.
        images = snapshot.images
        ids = list(map(attrgetter("id"), images))
        keys = list(zip(repeat(image_kind), ids))
        listed: Iterable[tuple[Image, ObjectKey]] = zip(images, keys)
        if len(dict.fromkeys(ids)) != len(ids):
            firsts: dict[str, tuple[Image, ObjectKey]] = {}
            for image, key in listed:
                firsts.setdefault(image.id, (image, key))
            listed = firsts.values()
        for image, key in listed:
            if image.layers:
                detailed.append(image)
                # Each layer's bytes are first counted as the image's own, by the image that shows
                # it first; a layer that turns out to have other holders is taken back below.
                alone = 0
                previous = ""
                for layer in image.layers:
                    chain_id = layer.chain_id
                    if chain_id in first:
                        others = more.get(chain_id)
                        if others is None:
                            more[chain_id] = [key]
                        else:
                            others.append(key)
                    else:
                        size = layer.size
                        first[chain_id] = (size, previous, key)
                        if size > 0:
                            alone += size
                    previous = chain_id
                if alone:
                    own[key] = alone
            else:
                # Without layer detail the engine's own split is the best we have: the unique
                # part is this image's alone; the shared part is held by something else too, so
                # it is never predicted as freed. An unknown split (-1) tells nothing: the whole
                # image may be shared, and counting it as unique would promise more than the disk
                # holds, so nothing is predicted.
                unique = max(image.size - image.shared_size, 0) if image.shared_size >= 0 else 0
                if unique:
                    own[key] = unique
                    opaque.append(key)
                if image.shared_size != 0:
                    unseen.append((key, image.shared_size))
        self._first = first
        self._more = more

        # build-cache record id -> chain id of the layer it holds; and for a record that
        # matches several layers of its size with nothing to tell them apart, every one of them
        # (it may hold any): each such layer counts the record among its holders, so deleting
        # an image never promises bytes a record may still hold (they are "held by cache").
        self.record_layer, self.record_candidates = _match_records(snapshot.build_cache, first)
        layer_records: dict[str, list[ObjectKey]] = defaultdict(list)
        for record_id, chain_id in self.record_layer.items():
            layer_records[chain_id].append((Kind.BUILD_CACHE, record_id))
        for record_id, chain_ids in self.record_candidates.items():
            for chain_id in chain_ids:
                layer_records[chain_id].append((Kind.BUILD_CACHE, record_id))

        # The layers with other holders than the image that showed them first: their bytes
        # become a holding, no longer that image's own (in no set order: the holdings' order
        # changes no figure, and looking at those layers alone spares a pass over all). Images without
        # layer detail that may share such a layer hold it too (or, past the limit, something
        # that never goes does: it is never predicted).
        taken_back: list[ObjectKey] = []
        # image -> bytes of its layers that no other detailed image shows but build cache holds.
        held_with_cache: dict[ObjectKey, int] = {}
        sizes, holders, image_holders = self._sizes, self._holders, self._image_holders

        def hidden(size: int) -> tuple[ObjectKey, ...]:
            return tuple(u for u, shared in unseen if shared < 0 or size <= shared) if unseen else ()

        for chain_id, others in more.items():
            size, _, head = first[chain_id]
            if size <= 0:
                continue
            showing = tuple(dict.fromkeys((head, *others)))
            records = tuple(layer_records.get(chain_id, ()))
            if len(showing) + len(records) > 1:  # (one holder: an image that lists the layer twice)
                own[head] -= size
                taken_back.append(head)
                if len(showing) == 1:
                    held_with_cache[head] = held_with_cache.get(head, 0) + size
                also = hidden(size)
                if len(also) <= _UNSEEN_HOLDERS_LIMIT:
                    sizes.append(size)
                    holders.append(showing + also + records)
                    image_holders.append(len(showing) + len(also))
        # The layers one image shows and build cache holds (most holdings, on a host that builds).
        for chain_id, cached in layer_records.items():
            if chain_id in more:
                continue
            size, _, head = first[chain_id]
            if size <= 0:
                continue
            own[head] -= size
            taken_back.append(head)
            held_with_cache[head] = held_with_cache.get(head, 0) + size
            also = hidden(size)
            if len(also) <= _UNSEEN_HOLDERS_LIMIT:
                sizes.append(size)
                holders.append((head, *also, *cached))
                image_holders.append(1 + len(also))

        cache_kind = Kind.BUILD_CACHE
        # An unshared record's bytes are its own. (A shared record without a matching layer
        # shares its bytes with something we cannot see: deleting it is predicted to free
        # nothing.) Made apart and merged, with no defaultdict look-up per record; the engine
        # lists a record once, and should it list one twice, the plain sum counts it as before.
        unshared = [r for r in snapshot.build_cache if r.size > 0 and not r.shared]
        cache_own = {(cache_kind, r.id): r.size for r in unshared}
        if len(cache_own) == len(unshared):
            own.update(cache_own)
        else:
            for record in unshared:
                own[(cache_kind, record.id)] = own.get((cache_kind, record.id), 0) + record.size
        if opaque:
            taken_back += self._hold_with_unmatched_records(snapshot.build_cache, opaque, own)
        for container in snapshot.containers:
            if container.size_rw > 0:
                own[(Kind.CONTAINER, container.id)] = own.get((Kind.CONTAINER, container.id), 0) + container.size_rw
        for volume in snapshot.volumes:
            if volume.size > 0:
                own[(Kind.VOLUME, volume.name)] = own.get((Kind.VOLUME, volume.name), 0) + volume.size
        if unseen:
            taken_back += self._share_with_unseen_images(detailed, tuple(u for u, _ in unseen), own,
                                                         held_with_cache)
        # An image all of whose layers turned out shared holds nothing alone.
        for key in taken_back:
            if not own.get(key, 1):
                del own[key]
        self._own = own

    def _hold_with_unmatched_records(
        self, records: Iterable[BuildCacheRecord], opaque: list[ObjectKey], own: dict[ObjectKey, int]
    ) -> list[ObjectKey]:
        """Take back the unique part of an image without layer detail that build cache may hold.

        A shared build-cache record matched to no layer may hold a layer of an image without
        layer detail, its unique part included: that part is then held by the image and every
        such record no larger than it (deleting the image alone frees it once that cache goes:
        "held by cache"), or, past ``_UNSEEN_HOLDERS_LIMIT`` records, never predicted.
        Returns the images whose bytes were taken back.
        """
        unmatched = [r for r in records if r.shared and r.size > 0
                     and r.id not in self.record_layer and r.id not in self.record_candidates]
        if not unmatched:
            return []
        taken: list[ObjectKey] = []
        for key in opaque:
            unique = own[key]
            fitting = tuple(dict.fromkeys((Kind.BUILD_CACHE, r.id) for r in unmatched if r.size <= unique))
            if fitting:
                self._share(own, taken, key, unique, fitting, images=1)
        return taken

    def _share_with_unseen_images(
        self, detailed: list[Image], unseen: tuple[ObjectKey, ...], own: dict[ObjectKey, int],
        held_with_cache: dict[ObjectKey, int]
    ) -> list[ObjectKey]:
        """Take back the bytes a detailed image holds alone beyond what the engine says it holds alone.

        An image without layer detail that shares bytes hides which layers it shares: a detailed
        image's layer may be one of them, although no other layer list shows it. The engine's
        own figure, size minus shared size, is what a detailed image holds alone among images
        (unknown, -1: nothing is known to be its alone), and part of that may be held by build
        cache too (``held_with_cache``, already a holding). What its layers hold alone beyond the
        rest is shared with one of the images without detail: those bytes become a holding of
        the image and every such image (deleting all of them frees it), or, past
        ``_UNSEEN_HOLDERS_LIMIT`` of them, are never predicted. Returns the images whose bytes
        were taken back.
        """
        taken: list[ObjectKey] = []
        for image in detailed:
            key = (Kind.IMAGE, image.id)
            unique = image.size - image.shared_size if image.shared_size >= 0 else 0
            excess = own.get(key, 0) - max(unique - held_with_cache.get(key, 0), 0)
            if excess > 0:
                self._share(own, taken, key, excess, unseen, images=1 + len(unseen))
        return taken

    def _share(self, own: dict[ObjectKey, int], taken: list[ObjectKey], key: ObjectKey, size: int,
               others: tuple[ObjectKey, ...], images: int) -> None:
        """Move ``size`` bytes of what ``key`` holds alone into a holding of it and ``others``
        (``images`` of the holders are images); past ``_UNSEEN_HOLDERS_LIMIT`` others, into
        nothing: they are never predicted."""
        own[key] -= size
        taken.append(key)
        if len(others) <= _UNSEEN_HOLDERS_LIMIT:
            self._sizes.append(size)
            self._holders.append((key, *others))
            self._image_holders.append(images)

    def record_chains(self, record_id: str) -> tuple[str, ...]:
        """Given a build-cache record, return the chain ids of the layers it holds or may hold."""
        if record_id in self.record_layer:
            return (self.record_layer[record_id],)
        return self.record_candidates.get(record_id, ())

    def records_holding_images(self) -> dict[str, set[str]]:
        """Given the ledger, return build-cache record id -> ids of images containing its layer
        (any of its candidate layers, for a record that cannot be told apart)."""
        return {
            rid: {image_id for chain in self.record_chains(rid) for _, image_id in self._images_showing(chain)}
            for rid in (*self.record_layer, *self.record_candidates)
        }

    def _images_showing(self, chain_id: str) -> list[ObjectKey]:
        """Given a chain id, return the images whose layers show it, in listing order."""
        seen = self._first.get(chain_id)
        if seen is None:
            return []
        return [seen[2], *self._more.get(chain_id, ())]

    def freed(self, deletions: Sequence[ObjectKey]) -> Freed:
        """Given the objects to delete in execution order, return the bytes each frees.

        A byte is freed by the last of its holders to be deleted; a byte whose holders all
        go except build-cache records is reported as held by cache, on the last image.
        """
        freed, held = self.freed_in_order(deletions)
        return Freed(dict(zip(deletions, freed)), held)

    def freed_in_order(self, deletions: Sequence[ObjectKey]) -> tuple[list[int], dict[ObjectKey, int]]:
        """Given the objects to delete in execution order, return the bytes each deletion frees,
        in that order (a key listed twice: its figure at each place), and the bytes held by cache
        per image: ``freed`` as a list, without a dictionary of every deletion."""
        position = dict(zip(deletions, count()))  # a key listed twice: its last place
        # Bytes an object holds alone go with it, whenever it goes.
        freed = list(map(self._own.get, deletions, repeat(0)))
        held: dict[ObjectKey, int] = {}
        going, place_of = position.__contains__, position.get
        for size, holders, images in zip(self._sizes, self._holders, self._image_holders):
            # An image that stays keeps the bytes: asked first, stopping at the first one that
            # stays (a base layer has thousands of images, and one of the first usually stays).
            if images == 1:  # one image (most holdings: an image's layer that build cache holds)
                image = holders[0]
                image_place = place_of(image)
                if image_place is None:
                    continue
                if len(holders) == 2:  # and one record
                    record_place = place_of(holders[1])
                    if record_place is None:
                        held[image] = held.get(image, 0) + size
                    else:
                        freed[max(image_place, record_place)] += size
                    continue
            elif not all(map(going, islice(holders, images))):
                continue
            places = list(map(place_of, holders))  # None: a build-cache record that stays
            if None not in places:  # all go: the last to go frees the bytes
                freed[max(places)] += size
            else:  # only build cache stays: held by cache, on the last image
                last = holders[places.index(max(places[:images]))]
                held[last] = held.get(last, 0) + size
        if len(position) != len(freed):  # a key listed twice: its whole figure at every place
            freed = [freed[position[key]] for key in deletions]
        return freed, held

    def unique_bytes(self) -> dict[ObjectKey, int]:
        """Given the ledger, return object -> bytes it holds alone (what deleting just it would free)."""
        return dict(self._own)


def _match_records(
    records: Iterable[BuildCacheRecord], layers: dict[str, tuple[int, str, ObjectKey]]
) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """Given build-cache records and image layers (chain id -> size, parent chain id, first
    image), return record id -> chain id of the layer it holds, and for records several layers
    fit equally, record id -> those layers' chain ids."""
    shared = {r.id: r for r in records if r.shared and r.size > 0}
    # Only a size some shared record has can match: index the layers of those sizes alone.
    wanted = {r.size for r in shared.values()}
    # size -> the layer of that size; and for the sizes several layers have, all of them, sorted
    # (no list for each of the many sizes one layer has).
    one_of_size: dict[int, str] = {}
    several: dict[int, list[str]] = {}
    for chain_id, (size, _, _) in layers.items():
        if size in wanted:
            if size in one_of_size:
                candidates = several.get(size)
                if candidates is None:
                    several[size] = [one_of_size[size], chain_id]
                else:
                    candidates.append(chain_id)
            else:
                one_of_size[size] = chain_id
    for candidates in several.values():
        candidates.sort()

    def of_size(size: int) -> list[str]:
        if size in several:
            return several[size]
        return [one_of_size[size]] if size in one_of_size else []

    matched: dict[str, str] = {}
    ambiguous: dict[str, tuple[str, ...]] = {}
    # The records on the current path of parent look-ups (a loop of parents ends there):
    # one set, added to on the way up and taken from on the way back, not a copy per step.
    visiting: set[str] = set()

    def match(record: BuildCacheRecord) -> str | None:
        if record.id in matched:
            return matched[record.id]
        candidates = of_size(record.size)
        if not candidates:
            return None
        if len(candidates) > 1 and record.parent in shared and record.parent not in visiting:
            visiting.add(record.id)
            parent_layer = match(shared[record.parent])
            visiting.discard(record.id)
            preferred = [c for c in candidates if parent_layer and layers[c][1] == parent_layer]
            if preferred:
                candidates = preferred
        if len(candidates) > 1:
            # Several layers of this size and nothing to tell them apart: guessing could tie the
            # record to another project's image. It may hold any of them (see LayerLedger).
            ambiguous[record.id] = tuple(candidates)
            return None
        matched[record.id] = candidates[0]
        return candidates[0]

    # A record of a size only one layer has holds that layer, whatever its parents: match
    # those in listing order (the order they sit in memory). The others, in id order, as the
    # parent walk of a loop of parents depends on where it starts.
    undecided = []
    for record_id, record in shared.items():
        size = record.size
        if size in several:
            undecided.append(record_id)
        else:
            chain_id = one_of_size.get(size)
            if chain_id is not None:
                matched[record_id] = chain_id
    for record_id in sorted(undecided):
        match(shared[record_id])
    return matched, ambiguous
