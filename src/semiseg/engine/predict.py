"""Segment a folder of images or NIfTI volumes: one PNG class map per image, one NIfTI label volume
(``.nii.gz``, in the input's affine and header) per volume; a classifier's images: one CSV."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from semiseg.config import predict_intensity
from semiseg.engine.evaluate import predict_records, predict_slices
from semiseg.errors import DataError
from semiseg.io import atomic_write, check_folder, make_folder
from semiseg.ops import class_map

#: 2D images read, segmented and written together (bounded memory for folders of any size)
IMAGE_CHUNK = 32
#: a classifier's predictions: one row per image (image, class, probability of each class)
CLASSES_FILE = "predictions.csv"


def predict_folder(
    predict,
    state: dict,
    input_dir: str | Path,
    output_dir: str | Path,
    device: torch.device,
    cfg=None,
    classify: bool | None = None,
) -> int:
    """Write ``<output_dir>/<stem>.png`` (uint8 class indices) for every image in ``input_dir`` and
    ``<output_dir>/<stem>.nii.gz`` for every NIfTI volume (a 2D model segments it slice by slice, a 3D
    model whole or by sliding windows as ``cfg.inference`` says; intensities scaled as the folder
    dataset scales them, ``cfg.data.intensity``). A model of C > 1 channels reads each case from
    nnU-Net-style channel files ``<case>_0000.nii.gz`` … ``<case>_{C-1:04d}.nii.gz`` and writes
    ``<case>.nii.gz``. ``predict`` is the network call (``method.predict``, or an exported model's).
    A classifier (one class per image, e.g. SSLDEC on MNIST) writes one ``<output_dir>/predictions.csv``
    instead: ``image,class,p_0,…,p_{K-1}``, a row per image. ``classify`` says whether the network
    is one (:func:`is_classifier`); ``None`` probes it here.

    Every input is checked from its header before anything is written (2D images opened without
    decoding, NIfTI volumes' shapes and channels in one space); images are then read and segmented
    :data:`IMAGE_CHUNK` at a time and volumes one at a time, so memory does not grow with the
    folder. An input that fails to read after that (a corrupt block, NaN voxels, another channel
    count) stops the command and the masks this call created are removed (one it replaced keeps its
    new content). The output folder may be neither a file nor the input folder.
    """
    from PIL import Image

    from semiseg.data.folder import files_by_stem
    from semiseg.data.io import IMAGE_SUFFIXES, probe_image, read_model_image
    from semiseg.data.nnunet import probe_case, read_case
    from semiseg.data.records import Record
    from semiseg.data.volume_io import is_nifti, write_label_volume
    from semiseg.engine.inference import build_predict

    src = Path(input_dir)
    if not src.is_dir():
        raise DataError(
            src, "is a file: --input takes a folder of images" if src.exists() else "input folder not found"
        )
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES or is_nifti(p))
    if not files:
        raise DataError(src, "no images found (PNG/JPG/TIFF/NPY or NIfTI .nii/.nii.gz)")
    images = [f for f in files if not is_nifti(f)]
    volumes = [f for f in files if is_nifti(f)]
    for group in (images, volumes):  # one output per stem: a.png + a.npy, a.nii + a.nii.gz would share one
        files_by_stem(group, noun="inputs")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise DataError(out, "the output folder is a file")
    check_folder(out)
    if out.resolve() == src.resolve():
        raise DataError(out, "the output folder is the input folder: the masks would overwrite the images")
    image_size = state["image_size"]
    if images and len(image_size) == 3:
        raise DataError(images[0], "a 3D model segments volumes (NIfTI), not 2D images")
    intensity = predict_intensity(cfg)
    channels = cfg.data.channels if cfg is not None else "auto"  # how training converted colours
    for path in images:
        probe_image(path)
    cases = _volume_cases(volumes, state["in_channels"])
    for _case, channel_files in cases:
        probe_case(channel_files)
    if classify is None:
        classify = is_classifier(predict, state, device)
    if classify and volumes:
        raise DataError(volumes[0], "a classification model labels 2D images, not volumes")
    predict = build_predict(predict, cfg) if cfg is not None and not classify else predict
    created = not out.exists()
    make_folder(out)
    decision = state.get("decision")  # a threshold chosen on validation (train.threshold: val)
    written: list[Path] = []  # files this call made (a failure removes them; files it replaced stay)
    before = {p.name for p in out.iterdir()}
    rows: list[str] = []  # a classifier's CSV
    resized = 0  # a classifier's inputs of another size than its training images
    try:
        for start in range(0, len(images), IMAGE_CHUNK):  # a chunk of images in memory at a time
            chunk = images[start : start + IMAGE_CHUNK]
            pixels = [
                torch.from_numpy(read_model_image(p, state["in_channels"], intensity, channels))
                for p in chunk
            ]
            if classify:  # a class has no map to resize back: say that the input was resized
                resized += sum(tuple(x.shape[-2:]) != tuple(image_size) for x in pixels)
            for path, p in zip(chunk, predict_slices(predict, pixels, image_size, device)):
                if classify:
                    rows.append(
                        ",".join([path.name, str(int(p.argmax())), *(f"{v:.6g}" for v in p.tolist())])
                    )
                    continue
                label = label_map(p, decision)
                target = out / f"{path.stem}.png"
                atomic_write(target, lambda tmp, a=label: Image.fromarray(a).save(tmp, format="PNG"))
                written.append(target)
        for case, channel_files in cases:
            image, geometry = read_case(channel_files, intensity)
            record = Record(case, image, spacing=geometry.spacing, source=str(channel_files[0]))
            (p,) = predict_records(predict, [record], image_size, device)
            target = out / f"{case}.nii.gz"
            write_label_volume(target, label_map(p, decision), geometry)
            written.append(target)
        if classify:
            head = ",".join(["image", "class", *(f"p_{k}" for k in range(int(state["num_classes"])))])
            target = out / CLASSES_FILE
            atomic_write(target, lambda tmp: Path(tmp).write_text("\n".join([head, *rows]) + "\n"))
            written.append(target)
            if resized:
                size = "x".join(str(v) for v in image_size)
                print(f"note: {resized} of {len(images)} images are not {size} and were resized to it, the "
                      "size the classifier was trained on", file=sys.stderr)  # fmt: skip
    except BaseException:
        for target in written:
            if target.name not in before:
                target.unlink(missing_ok=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    return len(images) + len(cases)  # outputs: a multi-channel case's files make one mask


def is_classifier(predict, state: dict, device: torch.device) -> bool:
    """Whether the network gives one class vector per image ``[B, K]`` (a classifier), not a map."""
    if len(state["image_size"]) != 2:
        return False
    with torch.no_grad():
        return predict(torch.zeros(1, state["in_channels"], *state["image_size"], device=device)).ndim == 2


def label_map(probs: torch.Tensor, decision: dict | None = None) -> np.ndarray:
    """The uint8 class map of probabilities ``[K, *S]``: the argmax, or with a validation-chosen
    ``decision`` (``train.threshold: val``) foreground where ``p[1] >= decision["threshold"]``."""
    label = (probs[1] >= decision["threshold"]).long() if decision else class_map(probs, 0)
    return label.numpy().astype(np.uint8)


def _volume_cases(files: list[Path], channels: int) -> list[tuple[str, list[Path]]]:
    """(case, its channel files) of NIfTI inputs: each file a case for a one-channel model; for C > 1
    channels the nnU-Net naming ``<case>_0000`` … ``<case>_{C-1:04d}``
    (:func:`~semiseg.data.nnunet.channel_cases`, strict)."""
    from semiseg.data.nnunet import channel_cases
    from semiseg.data.volume_io import nifti_stem

    if channels == 1:
        return [(nifti_stem(f), [f]) for f in files]
    return list(channel_cases(files, channels, strict=True).items())
