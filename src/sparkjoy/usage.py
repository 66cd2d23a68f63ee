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
from itertools import compress, count, islice, repeat
from operator import attrgetter, itemgetter
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
    record, a writable layer, a volume) are summed per object in ``_own`` (kind -> id ->
    bytes): deleting that object frees them, whenever it goes. Bytes several objects hold are
    holdings: ``_sizes[i]`` bytes held by the distinct objects ``_holders[i]`` (parallel lists,
    not an object per holding): the ids of ``_image_holders[i]`` images first, then of
    build-cache records. Ids, not (kind, id) keys: at 100,000 images a tuple per object, made
    and hashed again at every look-up, was a tenth of the planner's time. Holders are a tuple,
    not a set: a set costs four times the memory.
    """

    def __init__(self, snapshot: Snapshot):
        self._sizes: list[int] = []
        self._holders: list[tuple[str, ...]] = []
        self._image_holders: list[int] = []
        # Bytes each object holds alone, by kind and id: the ledger keeps these very dicts.
        own: dict[str, int] = {}  # images
        # chain id -> its size, the chain id below it and the first image showing it (first
        # sighting wins), in the order first seen; and chain id -> the images showing it after
        # that one, for a layer shown more than once. One entry per layer at first sight, a list
        # only for the shared ones.
        first: dict[str, tuple[int, str, str]] = {}
        more: dict[str, list[str]] = {}
        # The images with layer detail; and those without it that share bytes, with their
        # shared size (-1: unknown): they may hold any layer of the others (see the pass over shared
        # layers below, and _share_with_unseen_images).
        detailed: list[Image] = []
        unseen: list[tuple[str, int]] = []
        opaque: list[str] = []  # the images without layer detail with a unique part

        # An image listed again: its first listing counts, once.
        listed: Iterable[Image] = snapshot.images
        if len(dict.fromkeys(map(attrgetter("id"), snapshot.images))) != len(snapshot.images):
            firsts: dict[str, Image] = {}
            for image in snapshot.images:
                firsts.setdefault(image.id, image)
            listed = firsts.values()
        for image in listed:
            image_id = image.id
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
                            more[chain_id] = [image_id]
                        else:
                            others.append(image_id)
                    else:
                        size = layer.size
                        first[chain_id] = (size, previous, image_id)
                        if size > 0:
                            alone += size
                    previous = chain_id
                if alone:
                    own[image_id] = alone
            else:
                # Without layer detail the engine's own split is the best we have: the unique
                # part is this image's alone; the shared part is held by something else too, so
                # it is never predicted as freed. An unknown split (-1) tells nothing: the whole
                # image may be shared, and counting it as unique would promise more than the disk
                # holds, so nothing is predicted.
                unique = max(image.size - image.shared_size, 0) if image.shared_size >= 0 else 0
                if unique:
                    own[image_id] = unique
                    opaque.append(image_id)
                if image.shared_size != 0:
                    unseen.append((image_id, image.shared_size))
        self._first = first
        self._more = more

        # build-cache record id -> chain id of the layer it holds; and for a record that
        # matches several layers of its size with nothing to tell them apart, every one of them
        # (it may hold any): each such layer counts the record among its holders, so deleting
        # an image never promises bytes a record may still hold (they are "held by cache").
        self.record_layer, self.record_candidates = _match_records(snapshot.build_cache, first)
        layer_records: dict[str, list[str]] = defaultdict(list)
        for record_id, chain_id in self.record_layer.items():
            layer_records[chain_id].append(record_id)
        for record_id, chain_ids in self.record_candidates.items():
            for chain_id in chain_ids:
                layer_records[chain_id].append(record_id)

        # The layers with other holders than the image that showed them first: their bytes
        # become a holding, no longer that image's own (in no set order: the holdings' order
        # changes no figure, and looking at those layers alone spares a pass over all). Images without
        # layer detail that may share such a layer hold it too (or, past the limit, something
        # that never goes does: it is never predicted).
        taken_back: list[str] = []
        # image -> bytes of its layers that no other detailed image shows but build cache holds
        # (asked only about images with detail, when there are images without it).
        held_with_cache: dict[str, int] = {}
        sizes, holders, image_holders = self._sizes, self._holders, self._image_holders

        def hidden(size: int) -> tuple[str, ...]:
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
            if not unseen:
                sizes.append(size)
                holders.append((head, *cached))
                image_holders.append(1)
                continue
            held_with_cache[head] = held_with_cache.get(head, 0) + size
            also = hidden(size)
            if len(also) <= _UNSEEN_HOLDERS_LIMIT:
                sizes.append(size)
                holders.append((head, *also, *cached))
                image_holders.append(1 + len(also))

        # An unshared record's bytes are its own. (A shared record without a matching layer
        # shares its bytes with something we cannot see: deleting it is predicted to free
        # nothing.) The engine lists a record once; should it list one twice, the sum counts it
        # as before.
        unshared = [r for r in snapshot.build_cache if r.size > 0 and not r.shared]
        own_records = {r.id: r.size for r in unshared}
        if len(own_records) != len(unshared):
            own_records = {}
            for record in unshared:
                own_records[record.id] = own_records.get(record.id, 0) + record.size
        if opaque:
            taken_back += self._hold_with_unmatched_records(snapshot.build_cache, opaque, own)
        own_containers: dict[str, int] = {}
        for container in snapshot.containers:
            if container.size_rw > 0:
                own_containers[container.id] = own_containers.get(container.id, 0) + container.size_rw
        own_volumes: dict[str, int] = {}
        for volume in snapshot.volumes:
            if volume.size > 0:
                own_volumes[volume.name] = own_volumes.get(volume.name, 0) + volume.size
        if unseen:
            taken_back += self._share_with_unseen_images(detailed, tuple(u for u, _ in unseen), own,
                                                         held_with_cache)
        # An image all of whose layers turned out shared holds nothing alone.
        for image_id in taken_back:
            if not own.get(image_id, 1):
                del own[image_id]
        self._own: dict[Kind, dict[str, int]] = {
            Kind.CONTAINER: own_containers, Kind.IMAGE: own, Kind.BUILD_CACHE: own_records, Kind.VOLUME: own_volumes}

    def _hold_with_unmatched_records(
        self, records: Iterable[BuildCacheRecord], opaque: list[str], own: dict[str, int]
    ) -> list[str]:
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
        taken: list[str] = []
        for image_id in opaque:
            unique = own[image_id]
            fitting = tuple(dict.fromkeys(r.id for r in unmatched if r.size <= unique))
            if fitting:
                self._share(own, taken, image_id, unique, fitting, images=1)
        return taken

    def _share_with_unseen_images(
        self, detailed: list[Image], unseen: tuple[str, ...], own: dict[str, int],
        held_with_cache: dict[str, int]
    ) -> list[str]:
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
        taken: list[str] = []
        for image in detailed:
            unique = image.size - image.shared_size if image.shared_size >= 0 else 0
            excess = own.get(image.id, 0) - max(unique - held_with_cache.get(image.id, 0), 0)
            if excess > 0:
                self._share(own, taken, image.id, excess, unseen, images=1 + len(unseen))
        return taken

    def _share(self, own: dict[str, int], taken: list[str], image_id: str, size: int,
               others: tuple[str, ...], images: int) -> None:
        """Move ``size`` bytes of what an image holds alone into a holding of it and ``others``
        (``images`` of the holders are images, the rest records); past ``_UNSEEN_HOLDERS_LIMIT``
        others, into nothing: they are never predicted."""
        own[image_id] -= size
        taken.append(image_id)
        if len(others) <= _UNSEEN_HOLDERS_LIMIT:
            self._sizes.append(size)
            self._holders.append((image_id, *others))
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
            rid: {image_id for chain in self.record_chains(rid) for image_id in self._images_showing(chain)}
            for rid in (*self.record_layer, *self.record_candidates)
        }

    def _images_showing(self, chain_id: str) -> list[str]:
        """Given a chain id, return the ids of the images whose layers show it, in listing order."""
        seen = self._first.get(chain_id)
        if seen is None:
            return []
        return [seen[2], *self._more.get(chain_id, ())]

    def freed(self, deletions: Sequence[ObjectKey]) -> Freed:
        """Given the objects to delete in execution order, return the bytes each frees.

        A byte is freed by the last of its holders to be deleted; a byte whose holders all
        go except build-cache records is reported as held by cache, on the last image.
        """
        places: dict[Kind, dict[str, int]] = {kind: {} for kind in Kind}
        for place, (kind, object_id) in enumerate(deletions):
            places[kind][object_id] = place  # a key listed twice: its last place
        own = self._own
        freed = [own[kind].get(object_id, 0) for kind, object_id in deletions]
        held = self._walk_holdings(freed, places[Kind.IMAGE], places[Kind.BUILD_CACHE])
        if sum(map(len, places.values())) != len(freed):  # a key listed twice: its whole figure at every place
            freed = [freed[places[kind][object_id]] for kind, object_id in deletions]
        return Freed(dict(zip(deletions, freed)), {(Kind.IMAGE, image_id): size for image_id, size in held.items()})

    def freed_in_order(self, deletions: Sequence[tuple[Kind, Sequence[str]]]) -> tuple[list[int], dict[str, int]]:
        """Given the ids to delete in execution order, kind after kind (``(kind, ids)`` each, a
        kind at most once), return the bytes each deletion frees, in that order (an id listed
        twice: its figure at each place), and image id -> bytes held by cache: ``freed`` for the
        planner, without a key or a dictionary entry per deletion."""
        places: dict[Kind, dict[str, int]] = {kind: {} for kind in Kind}
        freed: list[int] = []
        for kind, ids in deletions:
            places[kind] = dict(zip(ids, count(len(freed))))  # an id listed twice: its last place
            freed += map(self._own[kind].get, ids, repeat(0))
        held = self._walk_holdings(freed, places[Kind.IMAGE], places[Kind.BUILD_CACHE])
        if sum(map(len, places.values())) != len(freed):  # an id listed twice: its whole figure at every place
            freed = [freed[places[kind][object_id]] for kind, ids in deletions for object_id in ids]
        return freed, held

    def _walk_holdings(self, freed: list[int], image_places: dict[str, int],
                       record_places: dict[str, int]) -> dict[str, int]:
        """Add each holding whose holders all go to ``freed`` at the place of the last of them;
        return image id -> the bytes of the holdings only build cache keeps, on the last image."""
        held: dict[str, int] = {}
        image_going, image_place, record_place = image_places.__contains__, image_places.get, record_places.get
        for size, holders, images in zip(self._sizes, self._holders, self._image_holders):
            # An image that stays keeps the bytes: asked first, stopping at the first one that
            # stays (a base layer has thousands of images, and one of the first usually stays).
            if images == 1:  # one image (most holdings: an image's layer that build cache holds)
                image = holders[0]
                place = image_place(image)
                if place is None:
                    continue
                if len(holders) == 2:  # and one record
                    last_record = record_place(holders[1])
                    if last_record is None:
                        held[image] = held.get(image, 0) + size
                    else:
                        freed[max(place, last_record)] += size
                    continue
            elif not all(map(image_going, islice(holders, images))):
                continue
            # None: a build-cache record that stays.
            records = list(map(record_place, islice(holders, images, None)))
            if None not in records:  # all go: the last to go frees the bytes
                last_place = max(map(image_place, islice(holders, images)))
                freed[max(last_place, *records) if records else last_place] += size
            else:  # only build cache stays: held by cache, on the last image
                places = list(map(image_place, islice(holders, images)))
                last = holders[places.index(max(places))]
                held[last] = held.get(last, 0) + size
        return held

    def unique_bytes(self) -> dict[ObjectKey, int]:
        """Given the ledger, return object -> bytes it holds alone (what deleting just it would free)."""
        return {(kind, object_id): size for kind, own in self._own.items() for object_id, size in own.items()}


def _match_records(
    records: Iterable[BuildCacheRecord], layers: dict[str, tuple[int, str, str]]
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
    # The layers of a wanted size, picked in C: most layers are of no record's size.
    sizes = list(map(itemgetter(0), layers.values()))
    fits = list(map(wanted.__contains__, sizes))
    for chain_id, size in zip(compress(layers, fits), compress(sizes, fits)):
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
        if len(candidates) > 1 and record.parent and record.parent in shared and record.parent not in visiting:
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
