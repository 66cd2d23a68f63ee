"""Images with digest references (RepoDigests), pruned on the real engine.

Nothing can be pulled here, so the digest references a pull would leave are written into the
engine's reference store (image/<driver>/repositories.json) while the engine is stopped,
exactly as `docker pull repo:tag` / `docker pull repo@sha256:...` store them; the engine is
then started again and the images are pruned by the current executor.

Every image pulled from a registry has a RepoDigest; an image whose tag a newer pull moved
away is the classic `<none>` image with only a RepoDigest left: the most common thing a
pruner deletes.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import closing

from sparkjoy.executor import Outcome

from tests import fixtures
from tests.engine import IsolatedEngine
from tests.reliability.support import inventory, library_prune


def _digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def _add_references(engine: IsolatedEngine, refs: dict[str, str], drop: tuple[str, ...] = ()) -> None:
    """Write references (fully qualified, e.g. ``localhost:5000/a/b@sha256:...``) for images
    into the engine's reference store while it is stopped (and drop the tags ``drop``, as a
    newer pull moving them away would), then start it again."""
    engine._stop_daemon()
    [path] = list((engine.data_root / "image").glob("*/repositories.json"))
    data = json.loads(path.read_text())
    for ref in drop:
        name = ref.rsplit(":", 1)[0]
        del data["Repositories"][name][ref]
        if not data["Repositories"][name]:
            del data["Repositories"][name]
    for ref, image_id in refs.items():
        name = ref.split("@", 1)[0] if "@" in ref else ref.rsplit(":", 1)[0]
        data.setdefault("Repositories", {}).setdefault(name, {})[ref] = image_id
    path.write_text(json.dumps(data))
    engine._start_daemon()


def _inspect(engine: IsolatedEngine, image_id: str) -> dict:
    with closing(engine.client()) as client:
        return client.api.inspect_image(image_id)


def test_a_pulled_image_with_its_tag_and_digest_is_deleted_without_an_unplanned_alarm(engine_factory):
    """`docker pull localhost:5000/pulled/app:1` leaves the tag and a digest of the same
    repository. Deleting it by ID makes the engine answer Untagged for both; the digest is no
    tag "added to the image since the re-check", and nothing beyond the plan went."""
    engine = engine_factory()
    image = fixtures.import_image(engine, 1000, "localhost:5000/pulled/app:1")
    digest_ref = f"localhost:5000/pulled/app@{_digest('pulled-app-1')}"
    _add_references(engine, {digest_ref: image})
    assert _inspect(engine, image)["RepoDigests"] == [digest_ref], "the digest reference is in place"

    the_plan, result = library_prune(engine.host)

    [outcome] = [r for r in result.results if r.planned.id == image]
    assert outcome.outcome is Outcome.DELETED and image not in inventory(engine).images, outcome
    assert result.unplanned == (), (
        f"a plain prune of a pulled image reported removals beyond the plan: {result.unplanned}")
    assert result.ok, result
    assert outcome.removed_tags == ("localhost:5000/pulled/app:1",), outcome.removed_tags


def test_a_dangling_pulled_image_with_only_a_digest_is_deleted_without_an_unplanned_alarm(engine_factory):
    """The `<none>` image a newer pull leaves behind: no tag, one RepoDigest. The plan sees it
    as dangling; the engine's delete by ID answers Untagged for the digest."""
    engine = engine_factory()
    image = fixtures.import_image(engine, 1000, "localhost:5000/pulled/old:1")
    digest_ref = f"localhost:5000/pulled/old@{_digest('pulled-old')}"
    # The tag went (a newer pull took it), the digest stayed.
    _add_references(engine, {digest_ref: image}, drop=("localhost:5000/pulled/old:1",))
    inspect = _inspect(engine, image)
    assert not inspect["RepoTags"] and inspect["RepoDigests"] == [digest_ref]

    the_plan, result = library_prune(engine.host)

    [outcome] = [r for r in result.results if r.planned.id == image]
    assert outcome.outcome is Outcome.DELETED and image not in inventory(engine).images, outcome
    assert result.unplanned == (), (
        f"deleting a dangling pulled image reported removals beyond the plan: {result.unplanned}")
    assert result.ok, result


def test_an_image_pulled_by_digest_and_tagged_elsewhere_is_deleted(engine_factory):
    """`docker pull localhost:5000/base@sha256:...` then `docker tag ... app/local:1`: a tag in
    one repository, a digest in another. Deleted by ID at once, the engine refuses ("referenced
    in multiple repositories"), and the image could never be pruned: the executor removes the
    other repository's digest by name first."""
    engine = engine_factory()
    image = fixtures.import_image(engine, 1000, "app/local:1")
    digest_ref = f"localhost:5000/base@{_digest('base-by-digest')}"
    _add_references(engine, {digest_ref: image})
    inspect = _inspect(engine, image)
    assert inspect["RepoTags"] == ["app/local:1"] and inspect["RepoDigests"] == [digest_ref]

    the_plan, result = library_prune(engine.host)

    [outcome] = [r for r in result.results if r.planned.id == image]
    assert outcome.outcome is Outcome.DELETED and image not in inventory(engine).images, (
        f"the planned image was not deleted: {outcome.outcome.value}: {outcome.detail}")
    assert result.ok, result


def test_the_cli_prune_of_a_pulled_image_exits_ok(engine_factory):
    """What a user sees: `sparkjoy prune` of one ordinary pulled image deletes it and exits 0,
    with nothing reported beyond the plan."""
    from tests.reliability.support import prune_cli

    engine = engine_factory()
    image = fixtures.import_image(engine, 1000, "localhost:5000/pulled/cli:1")
    _add_references(engine, {f"localhost:5000/pulled/cli@{_digest('cli')}": image})

    run = prune_cli(engine.host)

    data = json.loads(run.stdout)
    [entry] = [o for o in data["objects"] if o["id"] == image]
    assert entry["result"] == "deleted", entry
    assert "unplanned" not in data, f"exit {run.returncode}, unplanned: {data.get('unplanned')}"
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])


def test_under_repo_an_image_with_a_digest_of_another_repository_is_out_of_scope(engine_factory):
    """`--repo 'app/*'`: app/local:1 also carries localhost:5000/base@sha256:... (pulled by
    digest, then tagged). Deleting it would remove a name outside the scope: it stays whole."""
    from tests.reliability.support import greedy_policy

    engine = engine_factory()
    image = fixtures.import_image(engine, 1000, "app/local:1")
    digest_ref = f"localhost:5000/base@{_digest('base-scoped')}"
    _add_references(engine, {digest_ref: image})

    the_plan, result = library_prune(engine.host, greedy_policy(repos=("app/*",)))

    [kept] = [o for o in the_plan.kept if o.id == image]
    assert kept.reason.startswith("out of scope: also referenced as localhost:5000/base@"), kept.reason
    inspect = _inspect(engine, image)
    assert inspect["RepoTags"] == ["app/local:1"] and inspect["RepoDigests"] == [digest_ref]
    assert result.ok, result


def test_an_exclusion_matching_a_digest_reference_protects_the_image(engine_factory):
    from tests.reliability.support import greedy_policy

    engine = engine_factory()
    image = fixtures.import_image(engine, 1000, "app/pinned:1")
    _add_references(engine, {f"keep/mirror@{_digest('mirror')}": image})

    the_plan, result = library_prune(engine.host, greedy_policy())  # excludes keep/*

    [kept] = [o for o in the_plan.kept if o.id == image]
    assert kept.reason.startswith("excluded: keep/mirror@sha256:"), kept.reason
    assert image in inventory(engine).images and result.ok
