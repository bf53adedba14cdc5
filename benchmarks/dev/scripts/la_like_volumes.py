"""Generated volumes in the LA2018 layout at LA's size, to time the LA2018 recipes where the data are
absent (no number about LA itself comes from them).

Each case is (x, y, z) = (112-150, 112-150, 88) voxels of N(0, 1) noise with an ellipsoid labeled 1
and brightened by 1.5, in ``<root>/2018LA_Seg_Training Set/<case>/mri_norm2.h5``; ``train.list``
names the first ``--train`` cases and ``test.list`` the rest.

    python benchmarks/dev/scripts/la_like_volumes.py /tmp/la/la2018 [--train 20 --test 2]
    OMP_NUM_THREADS=1 semiseg train -c mean-teacher-la2018 --quick --data-root /tmp/la -o /tmp/la/run \\
      --no-test --set train.epochs=2 --set train.iters_per_epoch=10 --set train.val_every=2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--train", type=int, default=20)
    p.add_argument("--test", type=int, default=2)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    names = [f"case{i:02d}" for i in range(a.train + a.test)]
    for name in names:
        x, y = (int(v) for v in rng.integers(112, 150, 2))
        shape = (x, y, 88)
        image = rng.normal(0, 1, shape).astype(np.float32)
        gx, gy, gz = np.ogrid[: shape[0], : shape[1], : shape[2]]
        inside = ((gx - x // 2) / 30.0) ** 2 + ((gy - y // 2) / 25.0) ** 2 + ((gz - 44) / 20.0) ** 2 < 1
        label = inside.astype(np.uint8)
        image[inside] += 1.5
        folder = a.root / "2018LA_Seg_Training Set" / name
        folder.mkdir(parents=True, exist_ok=True)
        with h5py.File(folder / "mri_norm2.h5", "w") as f:
            f.create_dataset("image", data=image)
            f.create_dataset("label", data=label)
    (a.root / "train.list").write_text("\n".join(names[: a.train]) + "\n")
    (a.root / "test.list").write_text("\n".join(names[a.train :]) + "\n")


if __name__ == "__main__":
    main()
