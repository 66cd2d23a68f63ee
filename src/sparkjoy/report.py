"""Rendering: tables and JSON built from plans and run results. Deciding happens elsewhere.

Dry and real runs render the same plan; only the verbs and the measured figures differ.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .executor import Outcome, RunResult
from .model import Kind, Snapshot
from .planner import Decision, Plan, PlannedObject
from .units import format_bytes, format_duration
from .usage import LayerLedger, ObjectKey, engine_usage

KIND_TITLES = {
    Kind.IMAGE: "Images",
    Kind.BUILD_CACHE: "Build cache",
    Kind.CONTAINER: "Containers",
    Kind.VOLUME: "Local volumes",
}
DF_ORDER = (Kind.IMAGE, Kind.BUILD_CACHE, Kind.CONTAINER, Kind.VOLUME)
COUNT_NOUNS = {  # "Removed: 1 container, 4 images, 36 build-cache records"
    Kind.IMAGE: ("image", "images"),
    Kind.BUILD_CACHE: ("build-cache record", "build-cache records"),
    Kind.CONTAINER: ("container", "containers"),
    Kind.VOLUME: ("volume", "volumes"),
}


def printable(text: str, *, newlines: bool = False) -> str:
    """Given text that came from the engine (names, tags, reasons, error messages), return it
    safe for a terminal: control and format characters are shown escaped, so a name holding
    ESC sequences, a carriage return or a bidi override cannot rewrite what the user reads.

    Example: ``printable("a\\x1b[2Jb")`` -> ``"a\\\\x1b[2Jb"`` (a backslash, then x1b).
    """
    if text.isprintable() and "\u2028" not in text:
        return text
    return "".join(
        ch if (newlines and ch == "\n") or not (unicodedata.category(ch)[0] == "C" or ch in "\u2028\u2029")
        else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def table(rows: list[list[str]], header: list[str]) -> str:
    """Docker-style table: left-aligned columns separated by three spaces."""
    cells = [[printable(str(cell)) for cell in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines)


def display_id(planned: PlannedObject) -> str:
    if planned.kind is Kind.VOLUME:
        return planned.id if len(planned.id) <= 24 else planned.id[:12]
    return planned.id.split(":", 1)[-1][:12]


def display_names(planned: PlannedObject, limit: int = 48) -> str:
    text = printable(", ".join(planned.names)) if planned.names else "<none>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- df ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KindUsage:
    kind: Kind
    count: int
    bytes: int  # on disk, each byte once
    reclaimable: int  # freed by the active policy's plan
    held_by_cache: int  # bytes of planned image deletions that build cache still holds
    detail: str  # e.g. "52MB shared with images"
    # Of ``reclaimable``, the bytes freed with the deletion of a build-cache record holding them
    # too (image layers, shown on the records' rows of a dry run).
    freed_with_cache: int = 0


def df_summary(plan: Plan) -> tuple[list[KindUsage], dict[tuple[Kind, str], int]]:
    """Given a plan, return per-kind usage and each object's unique bytes."""
    snapshot = plan.snapshot
    unique = LayerLedger(snapshot).unique_bytes()
    deletions = plan.deletions
    shared_cache = sum(r.size for r in snapshot.build_cache if r.shared)
    cache_total = sum(r.size for r in snapshot.build_cache)
    # Bytes count under the kind whose SIZE holds them: a shared cache record's are an image
    # layer's (counted under Images), although deleting the record, last of their holders, frees them.
    freed_with_cache = _freed_with_shared_cache(plan)
    usage = [
        KindUsage(
            Kind.IMAGE,
            len(snapshot.images),
            snapshot.layers_size,
            sum(o.bytes for o in deletions if o.kind is Kind.IMAGE) + freed_with_cache,
            sum(o.bytes_held_by_cache for o in deletions if o.kind is Kind.IMAGE),
            f"reclaimable includes {format_bytes(freed_with_cache)} of layers freed with the build cache holding "
            "them" if freed_with_cache else "",
            freed_with_cache,
        ),
        KindUsage(
            Kind.BUILD_CACHE,
            len(snapshot.build_cache),
            cache_total - shared_cache,
            sum(o.bytes for o in deletions if o.kind is Kind.BUILD_CACHE) - freed_with_cache,
            0,
            f"{format_bytes(shared_cache)} more is shared with images (counted there)" if shared_cache else "",
        ),
        KindUsage(
            Kind.CONTAINER,
            len(snapshot.containers),
            sum(max(c.size_rw, 0) for c in snapshot.containers),
            sum(o.bytes for o in deletions if o.kind is Kind.CONTAINER),
            0,
            "",
        ),
        KindUsage(
            Kind.VOLUME,
            len(snapshot.volumes),
            sum(max(v.size, 0) for v in snapshot.volumes),
            sum(o.bytes for o in deletions if o.kind is Kind.VOLUME),
            0,
            "",
        ),
    ]
    return usage, unique


def _largest(objects: list[PlannedObject], unique: Mapping[ObjectKey, int], shared: set[str],
             count: int) -> list[PlannedObject]:
    """Given objects, their unique bytes, the shared records and a count, return the ``count``
    largest: first by the bytes of theirs the kind's SIZE counts (a shared record's are counted
    under Images: its records follow the others), then by SIZE, the column shown, then by
    UNIQUE, then by id (on a BuildKit host most images' unique bytes are 0: build cache holds
    their layers too, so unique bytes alone would pick at random)."""
    return sorted(objects, key=lambda o: (counted_under(o, shared) is not o.kind, -o.size,
                                          -unique.get(o.key, 0), o.id))[:count]


def render_df(plan: Plan, verbose: bool = False, largest: int = 5) -> str:
    usage, unique = df_summary(plan)
    rows = []
    for item in usage:
        pct = f" ({100 * item.reclaimable / item.bytes:.0f}%)" if item.bytes > 0 else ""
        rows.append(
            [
                KIND_TITLES[item.kind],
                str(item.count),
                format_bytes(item.bytes),
                format_bytes(item.reclaimable) + pct,
                format_bytes(item.held_by_cache) if item.held_by_cache else "",
            ]
        )
    out = [table(rows, ["TYPE", "TOTAL", "SIZE", "RECLAIMABLE", "HELD BY CACHE"])]
    out.append(f"\nTotal on disk: {format_bytes(engine_usage(plan.snapshot))} (each shared layer counted once)")
    notes = [f"{KIND_TITLES[u.kind]}: {u.detail}" for u in usage if u.detail]
    if any(u.held_by_cache for u in usage):
        notes.append(
            "HELD BY CACHE: bytes of images the policy removes that build-cache records still hold; "
            "they are freed when that cache is pruned too."
        )
    notes.append(f"RECLAIMABLE: what `sparkjoy prune` with the active policy frees ({_policy_line(plan)}).")
    out.extend(notes)

    shared = shared_records(plan.snapshot)
    for kind in DF_ORDER:
        objects = [o for o in plan.objects if o.kind is kind]
        if not objects:
            continue
        chosen = objects if verbose else _largest(objects, unique, shared, largest)
        title = f"\n{KIND_TITLES[kind]}" + ("" if verbose else f", largest {len(chosen)} of {len(objects)}") + ":"
        rows = [
            [
                display_id(o),
                display_names(o),
                format_bytes(o.size),
                format_bytes(unique.get(o.key, 0)),
                o.decision.value,
                o.reason,
            ]
            for o in chosen
        ]
        out.append(title)
        out.append(table(rows, ["ID", "NAMES", "SIZE", "UNIQUE", "PLAN", "REASON"]))
    return "\n".join(out)


def df_json(plan: Plan) -> dict[str, Any]:
    usage, unique = df_summary(plan)
    return {
        "total_bytes": engine_usage(plan.snapshot),
        "summary": [
            {
                "kind": u.kind.value,
                "count": u.count,
                "bytes": u.bytes,
                "reclaimable_bytes": u.reclaimable,
                "held_by_cache_bytes": u.held_by_cache,
                "freed_with_cache_bytes": u.freed_with_cache,
            }
            for u in usage
        ],
        "objects": [dict(_object_json(o), unique_bytes=unique.get(o.key, 0)) for o in plan.objects],
        "predicted_bytes": plan.predicted_bytes,
    }


def _policy_line(plan: Plan) -> str:
    policy = plan.policy
    parts = [f"max age {format_duration(policy.max_age)}" if not policy.everything_old else "max age negative"]
    parts.append(f"keep {policy.keep_recent} per repository")
    if policy.labels:
        parts.append("labels " + ", ".join(str(s) for s in policy.labels))
    if policy.repos:
        parts.append("repos " + ", ".join(policy.repos))
    if policy.exclude:
        parts.append("excluding " + ", ".join(policy.exclude))
    return "; ".join(parts)


# -- prune ---------------------------------------------------------------------------------


def _object_json(o: PlannedObject) -> dict[str, Any]:
    entry = {
        "kind": o.kind.value,
        "id": o.id,
        "names": list(o.names),
        "decision": o.decision.value,
        "reason": o.reason,
        "bytes": o.bytes,
        "bytes_held_by_cache": o.bytes_held_by_cache,
        "size": o.size,
        "in_scope": o.in_scope,
        "reference_time": o.reference_time.isoformat() if o.reference_time else None,
    }
    if o.hidden_parents:  # a classic build's untagged step images, deleted with it
        entry["untagged_parents"] = list(o.hidden_parents)
    return entry


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "dry_run": True,
        "now": plan.now.isoformat(),
        "objects": [_object_json(o) for o in plan.objects],
        "predicted_bytes": plan.predicted_bytes,
        "held_by_cache_bytes": plan.held_by_cache_bytes,
    }


def result_json(result: RunResult) -> dict[str, Any]:
    by_key = {r.planned.key: r for r in result.results}
    objects = []
    for o in result.plan.objects:
        entry = _object_json(o)
        outcome = by_key.get(o.key)
        if o.decision is Decision.DELETE and outcome is not None:
            entry["result"] = outcome.outcome.value
            entry["detail"] = outcome.detail
            entry["removed_tags"] = list(outcome.removed_tags)
            if outcome.unplanned:
                entry["unplanned"] = list(outcome.unplanned)
        else:
            entry["result"] = "kept"
        objects.append(entry)
    data: dict[str, Any] = {
        "dry_run": False,
        "now": result.plan.now.isoformat(),
        "objects": objects,
        "predicted_bytes": result.plan.predicted_bytes,
        "held_by_cache_bytes": result.plan.held_by_cache_bytes,
        "reclaimed_bytes": max(result.reclaimed_bytes, 0),  # measured; other writers can make it negative
        "ok": result.ok,
        "failures": len(result.failures),
    }
    if result.stopped_early:
        data["stopped_early"] = result.stopped_early
    if result.unplanned:
        data["unplanned"] = list(result.unplanned)
    if result.audit is not None:
        data["audit"] = [{"kind": f.kind.value, "id": f.id, "problem": f.problem} for f in result.audit]
    return data


def render_plan(plan: Plan, verbose: bool = False) -> str:
    shown: Iterable[PlannedObject] = plan.objects if verbose else plan.deletions
    rows = [
        [o.kind.value, display_id(o), display_names(o), o.decision.value, format_bytes(o.bytes), o.reason]
        for o in shown
    ]
    out = []
    if rows:
        out.append(table(rows, ["KIND", "ID", "NAMES", "PLAN", "FREES", "REASON"]))
    else:
        out.append("Nothing to prune.")
    kept = len(plan.kept)
    if not verbose and kept:
        out.append(f"\nKeeping {kept} object(s); use -v to see each with its reason.")
    return "\n".join(out)


def plan_totals(plan: Plan, dry_run: bool) -> str:
    verb = "Would reclaim" if dry_run else "Predicted"
    line = f"{verb}: {format_bytes(plan.predicted_bytes)}"
    if plan.held_by_cache_bytes:
        line += f" (and {format_bytes(plan.held_by_cache_bytes)} more once the build cache holding it is pruned)"
    with_cache = _freed_with_shared_cache(plan)
    if with_cache:
        line += (f"\n{format_bytes(with_cache)} of it are image layers that build cache holds too: deleting the "
                 "image frees them only with the cache, so they show on the cache records' rows (deleted last).")
    return line


def shared_records(snapshot: Snapshot) -> set[str]:
    """Given a snapshot, return the build-cache records whose bytes are an image layer's."""
    return {r.id for r in snapshot.build_cache if r.shared}


def counted_under(planned: PlannedObject, shared: set[str]) -> Kind:
    """Given an object and the shared records, return the kind whose SIZE holds its bytes: a
    shared record's are an image layer's (Images), although deleting it, the last of their
    holders, frees them. df, the dry run's totals and the daemon's metrics count by this."""
    return Kind.IMAGE if planned.kind is Kind.BUILD_CACHE and planned.id in shared else planned.kind


def _freed_with_shared_cache(plan: Plan) -> int:
    """Given a plan, return the bytes its deletions of shared build-cache records free: image
    layers, freed when the record holding them too goes, after the images."""
    shared = shared_records(plan.snapshot)
    return sum(o.bytes for o in plan.deletions if o.kind is Kind.BUILD_CACHE and counted_under(o, shared) is Kind.IMAGE)


def render_result(result: RunResult, verbose: bool = False) -> str:
    rows = []
    for r in result.results:
        detail = r.detail or ("untagged " + ", ".join(r.removed_tags) if r.removed_tags else "")
        rows.append([r.planned.kind.value, display_id(r.planned), display_names(r.planned), r.outcome.value, detail])
    out = []
    if rows:
        out.append(table(rows, ["KIND", "ID", "NAMES", "RESULT", "DETAIL"]))
    counts = []
    for kind in (Kind.CONTAINER, Kind.IMAGE, Kind.BUILD_CACHE, Kind.VOLUME):
        n = result.count(kind)
        if n:
            counts.append(f"{n} {COUNT_NOUNS[kind][0 if n == 1 else 1]}")
    out.append("\nRemoved: " + (", ".join(counts) if counts else "nothing"))
    kept = [r for r in result.results if r.outcome is Outcome.KEPT]
    if kept:
        out.append(f"Kept {len(kept)} planned object(s) that changed since the plan or that the engine refused.")
    if result.failures:
        out.append(f"FAILED: {len(result.failures)} object(s); see RESULT above.")
    if result.stopped_early:
        out.append(f"Stopped early: {printable(result.stopped_early)}")
    if result.unplanned:
        out.append("WARNING: removed beyond the plan, changed by someone else in the instant between the "
                   "re-check and the deletion:")
        out.extend(f"  {printable(item)}" for item in result.unplanned)
    if result.audit:
        out.append("AUDIT FAILED: objects the plan kept are missing:")
        out.extend(f"  {f.kind.value} {printable(f.id)}: {printable(f.problem)}" for f in result.audit)
    elif result.audit is not None:
        out.append("Audit: every object the plan kept is still there.")
    out.append(f"Predicted: {format_bytes(result.plan.predicted_bytes)}")
    out.append(f"Total reclaimed space: {format_bytes(max(result.reclaimed_bytes, 0))}")
    return "\n".join(out)


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=False)


def snapshot_counts(snapshot: Snapshot) -> str:
    return (
        f"{len(snapshot.images)} images, {len(snapshot.containers)} containers, "
        f"{len(snapshot.build_cache)} build-cache records, {len(snapshot.volumes)} volumes"
    )
