"""Image folders and preprocessing.

:class:`ImageFolder` lists every image under a folder in a fixed order;
:func:`open_image` opens one safely as 8-bit RGB; :class:`TransformConfig` holds a
network's preprocessing numbers and :class:`Transform` applies them;
:class:`ImageBatches` walks a folder in batches and records every file it skipped.
"""

from .images import (
    DEFAULT_MAX_PIXELS,
    SKIP_KINDS,
    ImageFolder,
    ImageReadError,
    decode_image,
    display_path,
    image_extensions,
    open_image,
    probe_image,
    to_rgb,
    walk_files,
)
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Batch,
    ImageBatches,
    Note,
    Skipped,
    Transform,
    TransformConfig,
    denormalize,
    normalize,
    resize_and_crop,
    summarize_skips,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DEFAULT_MAX_PIXELS",
    "SKIP_KINDS",
    "ImageFolder",
    "ImageReadError",
    "decode_image",
    "display_path",
    "walk_files",
    "image_extensions",
    "open_image",
    "probe_image",
    "to_rgb",
    "Batch",
    "ImageBatches",
    "Note",
    "Skipped",
    "Transform",
    "TransformConfig",
    "denormalize",
    "normalize",
    "resize_and_crop",
    "summarize_skips",
]
