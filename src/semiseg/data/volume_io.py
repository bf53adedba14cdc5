"""Reading and writing NIfTI volumes (nibabel), in semiseg's array order.

A NIfTI file stores its voxels as (x, y, z[, t]) in the order of its affine's axes. semiseg's volumes
are ``[C, D, H, W]`` with D the slice axis: :func:`read_volume` transposes (x, y, z) to (z, y, x), so
that D = z (the slices), H = y, W = x, and orders the spacing (the header's voxel sizes, mm) the same
way. The file's affine, shape and header are kept in a :class:`VolumeGeometry`, so a label volume
can be written back in the input's space (:func:`write_label_volume`). Bad files fail in one line
naming the file: not readable, 4-D where a volume is expected (a trailing axis of size 1 is
dropped), an image and its mask with another shape or affine (:func:`check_same_geometry`).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semiseg.errors import DataError

__all__ = [
    "NIFTI_SUFFIXES",
    "VolumeGeometry",
    "check_same_geometry",
    "is_nifti",
    "probe_volume",
    "read_volume",
    "write_label_volume",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | os.PathLike) -> str:
    """The file name without ``.nii`` / ``.nii.gz``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


@dataclass(frozen=True)
class VolumeGeometry:
    """Where a volume lies: the file's affine (voxel (x, y, z) → mm), its shape (x, y, z) and header."""

    affine: np.ndarray
    shape: tuple[int, int, int]
    header: bytes  #: the NIfTI header block, to write labels with the input's header
    nifti2: bool = False  #: the header is NIfTI-2's (540 bytes), not NIfTI-1's (348)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm in semiseg's order (D, H, W) = (z, y, x)."""
        zooms = np.sqrt((self.affine[:3, :3] ** 2).sum(0))  # column norms: mm per voxel along x, y, z
        return float(zooms[2]), float(zooms[1]), float(zooms[0])


def _nib():
    try:
        import nibabel
    except ImportError:  # pragma: no cover - nibabel is a dependency
        raise DataError(None, "reading NIfTI files needs nibabel (pip install nibabel)") from None
    return nibabel


def probe_volume(path: str | os.PathLike) -> VolumeGeometry:
    """The geometry of a NIfTI volume from its header alone (no voxel is read): the checks of
    :func:`read_volume` that need no data, so a folder can be checked before any volume is loaded.

    Raises:
        DataError: the header cannot be read, or the file is not a volume.
    """
    return _open_volume(path)[1]


def _open_volume(path: str | os.PathLike):
    """The nibabel image of a NIfTI volume (its voxels not read yet) and its geometry; a DataError when
    the header cannot be read or the file is not a volume (a trailing axis of one frame is dropped)."""
    nib = _nib()
    try:
        img = nib.load(os.fspath(path))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(path, f"cannot read NIfTI file ({type(exc).__name__}: {exc})") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise DataError(path, f"expected a 3-D volume (x, y, z), got shape {shape}")
    if min(shape) == 0:
        raise DataError(path, f"empty volume: an axis of length 0 (shape {shape})")
    header = img.header.binaryblock if hasattr(img.header, "binaryblock") else b""
    geometry = VolumeGeometry(
        np.asarray(img.affine, dtype=np.float64), shape, header, isinstance(img.header, nib.Nifti2Header)
    )
    return img, geometry


def read_volume(path: str | os.PathLike, dtype=np.float32) -> tuple[np.ndarray, VolumeGeometry]:
    """A NIfTI volume as ``[D, H, W]`` (= (z, y, x)) of ``dtype`` and its geometry.

    Raises:
        DataError: the file cannot be read, or is not a volume (2-D, or 4-D with more than one frame).
    """
    img, geometry = _open_volume(path)
    try:
        data = np.asarray(img.dataobj).reshape(geometry.shape)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(path, f"cannot read NIfTI file ({type(exc).__name__}: {exc})") from None
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise DataError(path, f"{int((~np.isfinite(data)).sum())} voxels are NaN or infinite")
    return np.ascontiguousarray(data.transpose(2, 1, 0)).astype(dtype, copy=False), geometry


def check_same_geometry(
    image: str | os.PathLike, mask: str | os.PathLike, a: VolumeGeometry, b: VolumeGeometry
) -> None:
    """Raise a DataError naming both files when an image and its mask differ in shape or affine."""
    if a.shape != b.shape:
        raise DataError(mask, f"shape {b.shape} differs from its image's {a.shape} ({image})")
    if not np.allclose(a.affine, b.affine, atol=1e-3):
        raise DataError(mask, f"affine differs from its image's ({image}): the mask is in another space")


def write_label_volume(path: str | os.PathLike, labels: np.ndarray, geometry: VolumeGeometry) -> None:
    """Write ``labels`` ``[D, H, W]`` (class indices) as a uint8 NIfTI volume in ``geometry``'s space
    (its affine and header), atomically."""
    from semiseg.io import atomic_write

    nib = _nib()
    data = np.asarray(labels).transpose(2, 1, 0).astype(np.uint8)
    if tuple(data.shape) != tuple(geometry.shape):
        raise DataError(
            path, f"labels of shape {tuple(data.shape)} (x, y, z) do not fit the volume's {geometry.shape}"
        )
    header_class, image_class = (
        (nib.Nifti2Header, nib.Nifti2Image) if geometry.nifti2 else (nib.Nifti1Header, nib.Nifti1Image)
    )
    header = header_class.from_fileobj(io.BytesIO(geometry.header)) if geometry.header else None
    img = image_class(data, geometry.affine, header=header)
    img.set_data_dtype(np.uint8)
    gz = str(path).lower().endswith(".gz")

    def save(tmp: str) -> None:
        # nibabel picks the compression from the name: write to a name with the same suffix
        target = tmp + (".nii.gz" if gz else ".nii")
        nib.save(img, target)
        os.replace(target, tmp)

    atomic_write(path, save)
