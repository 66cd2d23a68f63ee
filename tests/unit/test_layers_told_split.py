"""DockerEngine._layers / convert.derived_layers: a layer another listed image holds is told
from an image's size only for an image of that one layer. With known layers beside it, the
engine's split cannot contradict a wrong known size (all of such an image's layers are
shared, so shared_size == size): it would flow through unseen, and then pass the exact check
of the image built on it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sparkjoy.engine import convert
from sparkjoy.engine.docker_engine import DockerEngine

B, W, S, Z = ("sha256:" + c * 64 for c in "1234")


def _image(image_id, diff_ids, size, shared):
    return ({"Id": image_id, "Size": size, "SharedSize": shared},
            {"Id": image_id, "RootFS": {"Type": "layers", "Layers": diff_ids}})


def _layers(wanted, cache, histories):
    engine = object.__new__(DockerEngine)
    engine._history_cache = dict(cache)
    engine._remembered = None
    asked = []

    def history(image_id):
        asked.append(image_id)
        return histories.get(image_id)

    engine._history = history
    with ThreadPoolExecutor(2) as pool:
        return engine._layers(pool, wanted), asked


def test_a_known_size_that_disagrees_with_the_engines_split_reaches_images_told_from_it():
    # Truth (the engine's listing): B = 100, w = 50, s = 50, z = 20. An earlier run's history
    # of w-image lines up as B = 80, w = 70 (sums to its size, so layers_from accepts it),
    # although the listing says 100 of its bytes are shared.
    wanted = [_image("w", [B, W], 150, 100), _image("x", [B, S], 150, 150), _image("z", [B, S, Z], 170, 150)]
    cache = {"w": [{"Size": 70, "CreatedBy": "RUN"}, {"Size": 80, "CreatedBy": "ADD"}]}
    found, asked = _layers(wanted, cache, {})
    sizes = {image: {layer.chain_id: layer.size for layer in layers} for image, layers in found.items()}
    s_chain = convert.chain_ids([B, S])[1]
    # Deleting x and z (w stays) frees s + z: the engine's split says 50 + 20 = 70.
    if not found["z"]:
        return  # no layer detail: accounted by the engine's own split, as before
    promised = sizes["z"][s_chain] + sizes["z"][convert.chain_ids([B, S, Z])[2]]
    assert promised <= 70, f"promises {promised} bytes for x and z, the engine's split gives 70"
