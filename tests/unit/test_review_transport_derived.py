"""Review tests (c3da09e): layers derived from other images' histories vs. each image's own.

DockerEngine._layers is driven with canned inspects and histories (no engine). The first
test shows where the two readings part: the one layer of unknown size absorbs whatever the
image's Size says, with nothing to check it against, where the image's own history (the
old reading) is rejected as not adding up. It FAILS on 2befd74.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sparkjoy.engine import convert
from sparkjoy.engine.docker_engine import DockerEngine


def _digest(name: str) -> str:
    return "sha256:" + name * 64 if len(name) == 1 else name


def _engine(histories: dict[str, list]) -> tuple[DockerEngine, list[str]]:
    engine = object.__new__(DockerEngine)
    engine._history_cache = {}
    asked: list[str] = []

    def history(image_id: str):
        asked.append(image_id)
        return histories.get(image_id)

    engine._history = history  # type: ignore[method-assign]
    return engine, asked


def _image(image_id: str, diff_ids: list[str], size: int, shared: int) -> tuple[dict, dict]:
    return ({"Id": image_id, "Size": size, "SharedSize": shared},
            {"Id": image_id, "RootFS": {"Type": "layers", "Layers": diff_ids}})


def test_a_derived_layer_agrees_with_the_images_own_history():
    base, own = _digest("b"), _digest("c")
    histories = {
        "x": [{"Size": 100, "CreatedBy": "ADD"}],
        "y": [{"Size": 20, "CreatedBy": "RUN"}, {"Size": 100, "CreatedBy": "ADD"}],  # adds to 120
        "z": [{"Size": 30, "CreatedBy": "RUN"}, {"Size": 100, "CreatedBy": "ADD"}],
    }
    # y's listing says 150 (not the 120 its history adds to), with 100 of it shared.
    wanted = [_image("x", [base], 100, 100), _image("y", [base, own], 150, 100),
              _image("z", [base, _digest("d")], 130, 100)]
    engine, asked = _engine(histories)
    with ThreadPoolExecutor(2) as pool:
        found = engine._layers(pool, wanted)
    for entry, inspect in wanted:
        by_own_history = convert.layers_from(inspect, histories[entry["Id"]], entry["Size"])
        assert found[entry["Id"]] == by_own_history, (
            f"{entry['Id']}: derived {found[entry['Id']]} but its own history gives {by_own_history or '() (as a whole)'}"
            f"; histories read: {asked}")
