"""ShapesWorld: procedurally drawn scenes of coloured shapes and a small Stable Diffusion model trained on them.

The submodule ``render`` draws seeded scenes and their captions, ``model`` builds and loads the shipped model
(``load_pipeline()`` returns a ``StableDiffusionPipeline``), ``train`` reproduces it.
"""

from ait2i.shapes.model import load_pipeline, pretrained_dir
from ait2i.shapes.render import (
    COLORS,
    HELD_OUT,
    SHAPES,
    Scene,
    ShapeSpec,
    caption,
    sample_scene,
    sample_training_scene,
)

__all__ = [
    "COLORS",
    "HELD_OUT",
    "SHAPES",
    "Scene",
    "ShapeSpec",
    "caption",
    "load_pipeline",
    "pretrained_dir",
    "sample_scene",
    "sample_training_scene",
]
