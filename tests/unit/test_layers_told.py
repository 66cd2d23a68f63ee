"""DockerEngine._layers on canned inspects and histories (no engine): which histories it
reads, and that an image's layers told from other images' histories never disagree with the
engine's own split of its bytes. (The real-engine comparison with each image's own history
is in tests/integration/test_history_cache.py.)"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sparkjoy.engine import convert
from sparkjoy.engine.docker_engine import DockerEngine

BASE, OWN_Y, OWN_Z = ("sha256:" + c * 64 for c in "bcd")
HISTORIES = {
    "x": [{"Size": 100, "CreatedBy": "ADD"}],
    "y": [{"Size": 20, "CreatedBy": "RUN"}, {"Size": 100, "CreatedBy": "ADD"}],
    "z": [{"Size": 30, "CreatedBy": "RUN"}, {"Size": 100, "CreatedBy": "ADD"}],
}


def _layers(wanted: list[tuple[dict, dict]]) -> tuple[dict, list[str]]:
    engine = object.__new__(DockerEngine)  # _layers needs no connection: histories are canned
    engine._history_cache = {}
    engine._remembered = None
    asked: list[str] = []

    def history(image_id: str):
        asked.append(image_id)
        return HISTORIES.get(image_id)

    engine._history = history  # type: ignore[method-assign]
    with ThreadPoolExecutor(2) as pool:
        return engine._layers(pool, wanted), asked


def _image(image_id: str, diff_ids: list[str], size: int, shared: int) -> tuple[dict, dict]:
    return ({"Id": image_id, "Size": size, "SharedSize": shared},
            {"Id": image_id, "RootFS": {"Type": "layers", "Layers": diff_ids}})


def test_one_history_tells_a_shared_base_and_each_image_with_one_layer_of_its_own():
    wanted = [_image("x", [BASE], 100, 100), _image("y", [BASE, OWN_Y], 120, 100),
              _image("z", [BASE, OWN_Z], 130, 100)]
    found, asked = _layers(wanted)
    assert asked == [], "x is the base alone: its size tells the base, and then y's and z's own layers"
    for entry, inspect in wanted:
        assert found[entry["Id"]] == convert.layers_from(inspect, HISTORIES[entry["Id"]], entry["Size"])
    found, asked = _layers(wanted[1:])
    assert len(asked) == 1, "without x, one of y and z has its history read; it tells the other"
    for entry, inspect in wanted[1:]:
        assert found[entry["Id"]] == convert.layers_from(inspect, HISTORIES[entry["Id"]], entry["Size"])


def test_an_image_whose_listing_disagrees_with_the_known_layers_has_its_own_history_read():
    # y's listing says 90 bytes of it are shared, where the base others show is 100: the one
    # layer of its own cannot be told from its size; its own history is read (which, not
    # adding up to its size either, makes it an image without layer detail, as before).
    wanted = [_image("x", [BASE], 100, 100), _image("y", [BASE, OWN_Y], 150, 90)]
    found, asked = _layers(wanted)
    assert "y" in asked
    assert found["y"] == convert.layers_from(wanted[1][1], HISTORIES["y"], 150) == ()


def test_a_told_layer_never_holds_more_than_the_engine_says_the_image_holds_alone():
    # y's listing (150, 100 shared) disagrees with its history (120): the engine's own split
    # is what a deletion is predicted by, as for an image without layer detail.
    wanted = [_image("x", [BASE], 100, 100), _image("y", [BASE, OWN_Y], 150, 100),
              _image("z", [BASE, OWN_Z], 130, 100)]
    found, _ = _layers(wanted)
    for entry, _inspect in wanted:
        alone = sum(layer.size for layer in found[entry["Id"]] if layer.chain_id != convert.chain_ids([BASE])[0])
        assert alone <= entry["Size"] - entry["SharedSize"], (entry["Id"], found[entry["Id"]])
