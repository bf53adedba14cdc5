"""Segment a folder of images and write one PNG class map per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from semiseg.engine.evaluate import predict_slices
from semiseg.errors import DataError
from semiseg.io import atomic_write
from semiseg.ops import class_map


def predict_folder(
    method, state: dict, input_dir: str | Path, output_dir: str | Path, device: torch.device
) -> int:
    """Write ``<output_dir>/<stem>.png`` (uint8 class indices) for every image in ``input_dir``.

    All inputs are read and checked first, so a bad file stops the command before anything is written.
    """
    from PIL import Image

    from semiseg.data.io import IMAGE_SUFFIXES, read_image

    src = Path(input_dir)
    if not src.is_dir():
        raise DataError(src, "input folder not found")
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(src, "no images found (PNG/JPG/TIFF)")
    channels = "gray" if state["in_channels"] == 1 else "rgb"
    images = [torch.from_numpy(read_image(p, channels=channels)) for p in files]
    probs = predict_slices(method.predict, images, state["image_size"], device)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    decision = state.get("decision")  # a threshold chosen on validation (train.threshold: val)
    for path, p in zip(files, probs):
        label = (p[1] >= decision["threshold"]).long() if decision else class_map(p, 0)
        label = label.numpy().astype(np.uint8)
        atomic_write(
            out / f"{path.stem}.png", lambda tmp, a=label: Image.fromarray(a).save(tmp, format="PNG")
        )
    return len(files)
