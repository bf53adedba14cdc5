"""nnU-Net's raw dataset layout (``Dataset<ID>_<name>/``), read as volume records.

::

    dataset.json          {"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "tumour": 1},
                           "numTraining": 30, "file_ending": ".nii.gz"}
    imagesTr/<case>_0000.nii.gz, <case>_0001.nii.gz, ...   one file per channel
    labelsTr/<case>.nii.gz
    imagesTs/, labelsTs/  optional: a test split when labelsTs/ exists (imagesTs alone is ignored)

Records are ``[C, D, H, W]`` (the channels in ``channel_names`` order, each scaled to [0, 1] by its
minimum and maximum with ``data.intensity: auto``), masks ``[D, H, W]``, spacing from the files.
Every channel file of a case must have the geometry of its first channel, and the label file too.
Classes: ``labels`` (integer values 0 … K − 1; nnU-Net's region-based lists are refused; an
``"ignore"`` label, K, marks unannotated voxels as nnU-Net v2's partial annotations do: losses and
metrics skip them). A case in
``imagesTr`` without a label file is unlabeled. ``data.dataset: nnunet`` with ``data.path`` the
dataset folder; NIfTI files only (``file_ending: .nii.gz`` or ``.nii``).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from semiseg.config import DataConfig
from semiseg.data.io import normalize_intensity, unlabeled_to_ignore
from semiseg.data.records import DatasetBundle, Record, load_records
from semiseg.data.registry import register_dataset
from semiseg.data.store import cache_dir
from semiseg.data.volume_io import VolumeGeometry, check_same_geometry, nifti_stem, probe_volume, read_volume
from semiseg.errors import DataError

__all__ = ["channel_cases", "load_nnunet", "read_case"]


def _read_json(root: Path) -> dict:
    path = root / "dataset.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "not found (an nnU-Net raw dataset folder has dataset.json)") from None
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read: {exc}") from None
    if not isinstance(meta, dict):
        raise DataError(path, "must hold one JSON object (channel_names, labels, file_ending)")
    for key in ("channel_names", "labels"):
        if not isinstance(meta.get(key), dict) or not meta[key]:
            raise DataError(path, f"needs a non-empty '{key}' mapping")
    if "file_ending" not in meta:
        raise DataError(path, "needs 'file_ending' (.nii.gz or .nii), as nnU-Net's dataset.json does")
    ending = meta["file_ending"]
    if ending not in (".nii.gz", ".nii"):
        raise DataError(path, f"file_ending {ending!r}: only NIfTI (.nii.gz, .nii) is read")
    labels = dict(meta["labels"])
    ignore = labels.pop("ignore", None)  # nnU-Net v2's partial annotations: the highest label value
    values = list(labels.values())
    if any(not isinstance(v, int) for v in values) or sorted(values) != list(range(len(values))):
        raise DataError(path, f"labels must map names to the integers 0..K-1 (no region lists), got {values}")
    if ignore is not None and (isinstance(ignore, bool) or ignore != len(values)):
        raise DataError(path, f"the 'ignore' label must be the highest value, {len(values)}, got {ignore!r}")
    meta["classes"], meta["ignore"] = labels, ignore
    return meta


def _cases(images: Path, ending: str, channels: int, declared: Path) -> dict[str, list[Path]]:
    """case → its channel files in order (files ``<case>_<NNNN><ending>`` of ``images``); a channel
    file beyond ``declared``'s (dataset.json's) ``channel_names`` is an error."""
    # hidden files (macOS's "._<name>" metadata beside each file on copies) are not cases
    listed = images.iterdir() if images.is_dir() else []
    files = sorted(p for p in listed if p.name.endswith(ending) and not p.name.startswith("."))
    return channel_cases(files, channels, declared=declared)


def channel_cases(
    files: Sequence[Path], channels: int, *, strict: bool = False, declared: Path | None = None
) -> dict[str, list[Path]]:
    """case → its channel files in order, from NIfTI files named ``<case>_0000`` … (nnU-Net's naming).

    A missing channel is an error naming the file expected; with ``strict`` (files a user hands to a
    model), so are a file outside that naming and a channel the model does not read; with
    ``declared`` (a dataset's dataset.json), a channel beyond its ``channel_names``.
    """
    pattern = re.compile(r"^(.*)_(\d{4})$")
    found: dict[str, dict[int, Path]] = {}
    for f in files:
        m = pattern.match(nifti_stem(f))
        if m is None:
            if strict:
                raise DataError(
                    f,
                    f"the model reads {channels} channels: name the files <case>_0000 ... <case>_{channels - 1:04d}",
                )
            continue
        found.setdefault(m.group(1), {})[int(m.group(2))] = f
    out = {}
    for case, by_channel in sorted(found.items()):
        missing = [c for c in range(channels) if c not in by_channel]
        if missing:
            some = by_channel[min(by_channel)]
            suffix = some.name[len(nifti_stem(some)) :]
            raise DataError(some.parent / f"{case}_{missing[0]:04d}{suffix}",
                            f"channel {missing[0]} of case '{case}' is missing ({channels} channels)")  # fmt: skip
        extra = sorted(set(by_channel) - set(range(channels)))
        if strict and extra:
            why = f"case '{case}' has channel {extra[0]}, which the model does not read ({channels} channels)"
            raise DataError(by_channel[extra[0]], why)
        if declared is not None and extra:
            why = f"channel {extra[0]} of case '{case}' is not in {declared}'s channel_names ({channels} channels)"
            raise DataError(by_channel[extra[0]], why)
        out[case] = [by_channel[c] for c in range(channels)]
    return out


def probe_case(files: Sequence[Path]) -> VolumeGeometry:
    """The geometry of a case's channel files from their headers alone (:func:`probe_volume`), with
    the check that every channel lies in the first one's space."""
    geometry = probe_volume(files[0])
    for f in files[1:]:
        check_same_geometry(files[0], f, geometry, probe_volume(f))
    return geometry


def read_case(files: Sequence[Path], intensity: str = "auto") -> tuple[np.ndarray, VolumeGeometry]:
    """A case's channel files (one NIfTI volume each, same geometry) as ``[C, D, H, W]``, each channel
    scaled on its own (``intensity``; "auto" = min-max), and their geometry."""
    channels, geometry = [], None
    for f in files:
        volume, geo = read_volume(f)
        if geometry is None:
            geometry = geo
        else:
            check_same_geometry(files[0], f, geometry, geo)
        channels.append(normalize_intensity(volume, "minmax" if intensity == "auto" else intensity))
    return np.stack(channels), geometry


def _record(
    case: str,
    files: Sequence[Path],
    label: Path | None,
    num_classes: int,
    intensity: str,
    ignore: int | None = None,
) -> Record:
    image, geometry = read_case(files, intensity)
    mask = None
    if label is not None:
        values, label_geo = read_volume(label, dtype=np.float64)
        check_same_geometry(files[0], label, geometry, label_geo)
        known = set(range(num_classes)) | ({ignore} if ignore is not None else set())
        bad = sorted(set(np.unique(values).tolist()) - known)
        if bad:
            raise DataError(
                label, f"label values {', '.join(f'{v:g}' for v in bad[:5])} are not in dataset.json's labels"
            )
        mask = unlabeled_to_ignore(values, ignore)
    return Record(
        id=case,
        image=image,
        mask=mask,
        group=case,
        source=str(files[0]),
        spacing=geometry.spacing,
    )


def load_nnunet(
    root: str | Path, intensity: str = "auto", loading: str = "auto", cache: Path | None = None
) -> DatasetBundle:
    """The bundle of an nnU-Net raw dataset folder (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder not found")
    meta = _read_json(root)
    ending = meta["file_ending"]
    n_channels = len(meta["channel_names"])
    num_classes = len(meta["classes"])
    splits: dict[str, list[Record]] = {}
    for split, images, labels in (("train", "imagesTr", "labelsTr"), ("test", "imagesTs", "labelsTs")):
        if split == "test" and not (root / labels).is_dir():
            continue
        cases = _cases(root / images, ending, n_channels, root / "dataset.json")
        if split == "train" and not cases:
            raise DataError(root / images, f"no cases (<case>_0000{ending})")
        label_files = [p for p in sorted((root / labels).glob(f"*{ending}")) if not p.name.startswith(".")]
        if label_files and not any(p.name[: -len(ending)] in cases for p in label_files):
            # nnU-Net tolerates spare label files, but none naming a case is a misnamed dataset
            raise DataError(root / labels, f"none of its {len(label_files)} label files names a case of "
                                           f"{images} (<case>{ending} for <case>_0000{ending})")  # fmt: skip
        readers = []
        for case, files in sorted(cases.items()):
            label = root / labels / f"{case}{ending}"
            if split == "test" and not label.is_file():
                raise DataError(label, "missing: every test case needs its label file")
            label = label if label.is_file() else None
            readers.append(functools.partial(_record, case, tuple(files), label, num_classes, intensity,
                                             meta["ignore"]))  # fmt: skip
        splits[split] = load_records(readers, loading, volumes=True, cache=cache)
    names = sorted(meta["classes"], key=lambda k: meta["classes"][k])
    return DatasetBundle(name=root.name, num_classes=num_classes, in_channels=n_channels, train=splits["train"],
                         test=splits.get("test"), class_names=names)  # fmt: skip


@register_dataset("nnunet")  # data.path: the Dataset<ID>_<name> folder
def _load(cfg: DataConfig, path: Path | None) -> DatasetBundle:
    return load_nnunet(path, cfg.intensity, cfg.loading, cache_dir(cfg.cache_dir))
