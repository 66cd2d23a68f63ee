"""convert.derived_layers: an image's layers told from layer sizes other histories gave, only
when the engine's own split (size, shared size) agrees."""

from __future__ import annotations

from sparkjoy.engine.convert import derived_layers
from sparkjoy.model import Layer


def test_the_one_layer_of_unknown_size_is_what_the_image_size_leaves():
    assert derived_layers(["a", "b", "c"], 100, 35, {"a": 30, "c": 5}, held_elsewhere=False) == (
        Layer("a", 30), Layer("b", 65), Layer("c", 5))


def test_the_known_layers_must_be_the_shared_size_when_the_last_one_is_the_images_alone():
    # The engine says 40 bytes are shared, the known layers (all shown by other images) are 35.
    assert derived_layers(["a", "b", "c"], 100, 40, {"a": 30, "c": 5}, held_elsewhere=False) is None


def test_a_layer_another_image_holds_is_told_only_for_an_image_of_that_one_layer():
    assert derived_layers(["a"], 100, 100, {}, held_elsewhere=True) == (Layer("a", 100),)
    # With a known layer beside it, every layer is shared: the split cannot check the sizes.
    assert derived_layers(["a", "b"], 100, 100, {"a": 30}, held_elsewhere=True) is None


def test_all_sizes_known_must_add_up_to_the_image_size():
    assert derived_layers(["a", "b"], 50, 50, {"a": 30, "b": 20}, held_elsewhere=False) == (
        Layer("a", 30), Layer("b", 20))
    assert derived_layers(["a", "b"], 51, 50, {"a": 30, "b": 20}, held_elsewhere=False) is None


def test_two_layers_of_unknown_size_cannot_be_told_apart():
    assert derived_layers(["a", "b", "c"], 100, 30, {"a": 30}, held_elsewhere=False) is None


def test_no_layers_no_size_or_an_unknown_split_tell_nothing():
    assert derived_layers([], 10, 0, {}, held_elsewhere=False) is None
    assert derived_layers(["a"], -1, 0, {}, held_elsewhere=False) is None
    assert derived_layers(["a", "b"], 100, -1, {"a": 30}, held_elsewhere=False) is None
