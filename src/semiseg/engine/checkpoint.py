"""Checkpoints: atomic writes, and safe loading with clear errors.

A checkpoint holds only tensors and plain Python values (numbers, strings, lists, dicts), so it is
read with ``torch.load(weights_only=True)``: a file someone hands over (a downloaded ``best.pt``)
cannot run code when loaded; anything else in it is refused as a bad file.
"""

from __future__ import annotations

import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semiseg.errors import DataError
from semiseg.io import atomic_write

FORMAT = "semiseg-checkpoint-1"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temp file + ``os.replace``)."""
    state = {"format": FORMAT, **state}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a folder: give a checkpoint file (e.g. best.pt in it)")
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        with warnings.catch_warnings():  # a plain pickle's protocol warning: the error below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc):  # garbage bytes, not a forbidden object (torch's message names it)
            raise DataError(
                path,
                f"cannot read checkpoint: not a PyTorch checkpoint, or a truncated one ({type(exc).__name__})",
            ) from None
        raise DataError(
            path, "refused: the checkpoint holds objects other than tensors and plain values (unsafe to load)"
        ) from None
    except OSError as exc:  # the file system refused it (permissions, ...): say so, not "not a checkpoint"
        raise DataError(path, f"cannot read checkpoint ({exc.strerror or type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001 - any reading failure is a bad file for the user
        what = "an empty file" if path.stat().st_size == 0 else "not a PyTorch checkpoint, or a truncated one"
        raise DataError(path, f"cannot read checkpoint: {what} ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError(path, "not a semiseg checkpoint")
    return state


def rng_state(cuda: bool = True) -> dict[str, Any]:
    """The global RNG states as tensors and plain values (weights-only loadable); the GPUs' too when
    ``cuda`` and CUDA is available (reading them starts CUDA)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }
    if cuda and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
        state["cuda_current"] = torch.cuda.get_rng_state()  # the generator this process draws from
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states, whatever device a checkpoint load mapped their tensors to
    (the generators take CPU byte tensors). CUDA states are restored for the GPUs both the saving and
    this process see (a resume on a machine with fewer GPUs restores those it has); then the saving
    process's current GPU's state goes to this process's current GPU. Under DDP rank 0 saves and rank r
    draws from GPU r, whose generator was seeded as rank 0's GPU and consumed as much (the same ops
    on the same per-rank shapes), so each rank resumes its own stream."""
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)
        # the saver's current GPU; a checkpoint written before this key existed came from a process
        # whose current GPU was GPU 0 (rank 0 under DDP, or a single process: set_device is called
        # for DDP only), so its first state is that GPU's
        current = state.get("cuda_current", state["cuda"][0] if state["cuda"] else None)
        if current is not None:
            torch.cuda.set_rng_state(current.cpu(), torch.cuda.current_device())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
