"""What ``semiseg data check`` reports about a dataset: sizes, class balance and channel statistics.

Everything is computed one record at a time (lazy records are read once, nothing is kept), so a check
of a large folder costs one decoding pass and little memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from semiseg.data.records import IGNORE_INDEX, DatasetBundle, Record

__all__ = ["dataset_stats", "format_stats"]


def _sizes(records: Sequence[Record]) -> dict[str, list[int]]:
    shapes = np.array([r.spatial_shape for r in records])
    names = ["D", "H", "W"][-shapes.shape[1] :]
    return {n: [int(shapes[:, i].min()), int(np.median(shapes[:, i])), int(shapes[:, i].max())]
            for i, n in enumerate(names)}  # fmt: skip


def dataset_stats(bundle: DatasetBundle, parts: dict[str, Sequence[Record]]) -> dict:
    """Per part (e.g. labeled / unlabeled / val / test): item count, spatial size (min, median, max per
    axis), voxel spacing range, the pixel share of every class and the share of masked items showing it
    (over the items with a mask), and per channel the mean, std, min and max of the intensities.
    """
    k, c = bundle.num_classes, bundle.in_channels
    out: dict = {"dataset": bundle.name, "num_classes": k, "in_channels": c, "class_names": bundle.class_names,
                 "parts": {}}  # fmt: skip
    for name, records in parts.items():
        part: dict = {"items": len(records), "with_mask": sum(r.has_mask for r in records)}
        if not records:
            out["parts"][name] = part
            continue
        part["size"] = _sizes(records)
        spacings = [r.spacing for r in records if r.spacing is not None]
        if spacings:
            s = np.array(spacings)
            part["spacing_mm"] = {"min": s.min(0).round(4).tolist(), "max": s.max(0).round(4).tolist()}
        pixels = np.zeros(k, np.int64)
        present = np.zeros(k, np.int64)
        unlabeled = 0  # mask pixels without a label (clicks, scribbles): outside the class shares
        total, sums, squares = 0, np.zeros(c), np.zeros(c)
        low, high = np.full(c, np.inf), np.full(c, -np.inf)
        for r in records:
            image = np.asarray(r.image).reshape(r.shape[0], -1)
            total += image.shape[1]
            for start in range(0, image.shape[1], 1 << 20):  # float64 sums over chunks: little memory
                chunk = image[:, start : start + (1 << 20)].astype(np.float64)
                sums += chunk.sum(1)
                squares += (chunk * chunk).sum(1)
                low, high = np.minimum(low, chunk.min(1)), np.maximum(high, chunk.max(1))
            if r.has_mask:
                mask = np.asarray(r.mask)
                counts = np.bincount(mask[mask != IGNORE_INDEX].ravel(), minlength=k)[:k]
                unlabeled += int(mask.size - counts.sum())
                pixels += counts
                present += counts > 0
        mean = sums / total
        std = np.sqrt(np.maximum(squares / total - mean**2, 0.0))
        part["channels"] = [{"mean": round(float(m), 4), "std": round(float(s), 4), "min": round(float(a), 4),
                             "max": round(float(b), 4)} for m, s, a, b in zip(mean, std, low, high)]  # fmt: skip
        tagged = [bundle.tags[r.id] for r in records if r.id in bundle.tags]
        if tagged:  # tags.json: image-level tags of the items it lists
            part["file_tags"] = {"items": len(tagged), "present": {
                bundle.class_names[c]: sum(c in t for t in tagged) for c in range(1, k)}}  # fmt: skip
        sized = sum(r.id in bundle.sizes for r in records)
        if sized:  # sizes.json
            part["file_sizes"] = {"items": sized}
        if part["with_mask"]:
            share = pixels / max(pixels.sum(), 1)
            part["classes"] = {bundle.class_names[i]: {"pixel_share": round(float(share[i]), 6),
                                                       "items_with_class": round(float(present[i] / part["with_mask"]), 4)}
                               for i in range(k)}  # fmt: skip
            if unlabeled:
                part["unlabeled_pixel_share"] = round(unlabeled / (unlabeled + int(pixels.sum())), 6)
        out["parts"][name] = part
    return out


def format_stats(stats: dict) -> str:
    """The report of :func:`dataset_stats` as text."""
    lines = [f"{stats['dataset']}: {stats['num_classes']} classes, {stats['in_channels']} channel(s)"]
    for name, part in stats["parts"].items():
        head = f"  {name}: {part['items']} items ({part['with_mask']} with a mask in the source)"
        if "size" in part:
            head += "; size " + ", ".join(f"{a} {v[0]}/{v[1]}/{v[2]}" for a, v in part["size"].items())
            head += " (min/median/max)"
        if "spacing_mm" in part:
            head += f"; spacing {part['spacing_mm']['min']} .. {part['spacing_mm']['max']} mm"
        lines.append(head)
        for i, ch in enumerate(part.get("channels", [])):
            lines.append(
                f"    channel {i}: mean {ch['mean']:.3f}, std {ch['std']:.3f}, range {ch['min']:.3f} .. {ch['max']:.3f}"
            )
        partial = "unlabeled_pixel_share" in part
        if partial:
            lines.append(f"    unlabeled: {100 * part['unlabeled_pixel_share']:.2f} % of the masks' pixels")
        for cls, v in part.get("classes", {}).items():
            share, items = 100 * v["pixel_share"], 100 * v["items_with_class"]
            of = "of labeled pixels" if partial else "of pixels"
            lines.append(f"    {cls}: {share:.2f} % {of}, in {items:.1f} % of masked items")
        if "file_tags" in part:
            t = part["file_tags"]
            shown = ", ".join(f"{cls} present in {n}" for cls, n in t["present"].items())
            lines.append(f"    tags.json: {t['items']} items ({shown})")
        if "file_sizes" in part:
            lines.append(f"    sizes.json: {part['file_sizes']['items']} items")
    return "\n".join(lines)
