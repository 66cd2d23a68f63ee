"""The engine behind a narrow interface (``base.Engine``) and its Docker implementation."""

from .base import Engine, ImageState

__all__ = ["Engine", "ImageState"]
