"""--images DIR: a folder of images as normalised batches shaped like the model's image input.

Every file PIL can open, in sorted path order (subfolders included), is converted to RGB (or L for a
1-channel input), its shorter side resized to size / 0.875 (bilinear), centre-cropped to the input's
H x W, scaled to [0, 1] and normalised per channel: x = (x - mean) / std. Default mean/std: ImageNet's
(0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) for 3 channels, 0.5 / 0.5 otherwise.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .messages import CLIError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CROP = 0.875


def parse_floats(text: str | None, channels: int, flag: str) -> tuple[float, ...] | None:
    """"a,b,c" (or one value for every channel) as `channels` floats; None passes through."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise CLIError(f"{flag} {text!r} is not a comma-separated list of numbers, e.g. 0.485,0.456,0.406") from None
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise CLIError(f"{flag} {text!r} gives {len(values)} values but the model's input has {channels} channels")
    return values


def _files(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        raise CLIError(f"--images {directory!r} is not a directory; pass a folder of images (jpg, png, ...)")
    return sorted(os.path.join(root, name) for root, _, names in os.walk(directory) for name in names
                  if not name.startswith("."))


def _image(path: str, channels: int, height: int, width: int):
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            scale = max(height, width) / CROP / min(img.size)
            img = img.resize((max(width, round(img.size[0] * scale)), max(height, round(img.size[1] * scale))),
                             Image.BILINEAR)
            left, top = (img.size[0] - width) // 2, (img.size[1] - height) // 2
            img = img.crop((left, top, left + width, top + height))
            return np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError):
        return None


def image_batches(directory: str, input_shape: tuple[int, ...], batch_size: int, mean=None, std=None) -> list:
    """The folder's images as float tensors of shape (batch_size, C, H, W) (the last batch may be smaller)."""
    if len(input_shape) != 4:
        raise CLIError(f"--images needs a model with one image input (N, C, H, W); its input shape is {input_shape}")
    channels, height, width = input_shape[1:]
    if channels not in (1, 3):
        raise CLIError(f"--images reads RGB or grayscale images; the model's input has {channels} channels")
    default = IMAGENET if channels == 3 else ((0.5,), (0.5,))
    mean = torch.tensor(mean or default[0]).view(1, channels, 1, 1)
    std = torch.tensor(std or default[1]).view(1, channels, 1, 1)
    pixels = [p for p in (_image(f, channels, height, width) for f in _files(directory)) if p is not None]
    if not pixels:
        raise CLIError(f"--images {directory!r} holds no image PIL can read; pass a folder of jpg/png files")
    x = torch.from_numpy(np.stack(pixels))
    x = (x.unsqueeze(1) if channels == 1 else x.permute(0, 3, 1, 2)).contiguous()
    x = (x - mean) / std
    return list(x.split(batch_size))
