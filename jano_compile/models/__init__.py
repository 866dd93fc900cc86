"""Models shipped with jano_compile: the bundled FLUX transformer and its procedural data."""

from .bundled import (
    BundledModel,
    BundledModelSpec,
    ClassConditioning,
    bundled,
    bundled_files,
    flow_sigmas,
    image_ids,
    load_bundled,
    pack,
    unpack,
)
from .shapes import CLASS_NAMES, ShapeDataConfig, make_batch, make_shapes

__all__ = [
    "BundledModel",
    "BundledModelSpec",
    "CLASS_NAMES",
    "ClassConditioning",
    "ShapeDataConfig",
    "bundled",
    "bundled_files",
    "flow_sigmas",
    "image_ids",
    "load_bundled",
    "make_batch",
    "make_shapes",
    "pack",
    "unpack",
]
