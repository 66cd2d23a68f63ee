"""convert.derived_layers: an image's layers told from layer sizes other histories gave."""

from __future__ import annotations

from sparkjoy.engine.convert import derived_layers
from sparkjoy.model import Layer


def test_the_one_layer_of_unknown_size_is_what_the_image_size_leaves():
    assert derived_layers(["a", "b", "c"], 100, {"a": 30, "c": 5}) == (Layer("a", 30), Layer("b", 65), Layer("c", 5))


def test_all_sizes_known_must_add_up_to_the_image_size():
    assert derived_layers(["a", "b"], 50, {"a": 30, "b": 20}) == (Layer("a", 30), Layer("b", 20))
    assert derived_layers(["a", "b"], 51, {"a": 30, "b": 20}) is None


def test_two_layers_of_unknown_size_cannot_be_told_apart():
    assert derived_layers(["a", "b", "c"], 100, {"a": 30}) is None


def test_known_sizes_larger_than_the_image_tell_nothing():
    assert derived_layers(["a", "b"], 10, {"a": 30}) is None


def test_no_layers_or_no_size_tell_nothing():
    assert derived_layers([], 10, {}) is None
    assert derived_layers(["a"], -1, {}) is None
