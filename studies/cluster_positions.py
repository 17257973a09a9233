"""Where in the image do a class's clusters lie? For the raw cluster maps of `nes segment
--mapping none` and the split's label PNGs (class ids, same file stem): per chosen class, every
cluster holding at least `--min-share` of the class's pixels, with its share, mean height and
width (0 = top / left, 1 = bottom / right) and mean luminance. A class split into bands of
height is cut by perspective; one split by luminance, by lighting.

    nes segment --run results/camvid/runs/RUN --mapping none --out seg/RUN DATA/camvid/val
    python -m studies.cluster_positions seg/RUN --labels DATA/camvid/valannot --images DATA/camvid/val \
        --classes 0=sky 1=building 3=road
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def class_cluster_positions(seg_dir: Path, labels: Path, images: Path, classes: dict[int, str]) -> dict:
    """{class name: {cluster: [pixels, sum of heights, sum of widths, sum of luminance]}}."""
    sums: dict[str, dict[int, np.ndarray]] = {name: {} for name in classes.values()}
    maps = sorted(seg_dir.glob("*_labels.png"))
    if not maps:
        raise SystemExit(f"{seg_dir}: no *_labels.png (write them with `nes segment --mapping none`)")
    for path in maps:
        stem = path.name.removesuffix("_labels.png")
        label_path, image_path = labels / f"{stem}.png", images / f"{stem}.png"
        if not label_path.exists():
            raise SystemExit(f"{label_path}: missing (labels of {path.name} are expected there)")
        label = np.asarray(Image.open(label_path))
        cluster_image: Image.Image = Image.open(path)
        if cluster_image.size != label.shape[::-1]:
            cluster_image = cluster_image.resize(label.shape[::-1], Image.Resampling.NEAREST)
        clusters = np.asarray(cluster_image)
        luminance = np.asarray(Image.open(image_path).convert("L").resize(label.shape[::-1]), dtype=np.float64)
        h, w = label.shape
        ys, xs = np.mgrid[0:h, 0:w]
        for class_id, name in classes.items():
            mask = label == class_id
            for cluster in np.unique(clusters[mask]):
                cell = mask & (clusters == cluster)
                row = np.array([cell.sum(), ys[cell].sum() / h, xs[cell].sum() / w, luminance[cell].sum()])
                sums[name][int(cluster)] = sums[name].get(int(cluster), 0) + row
    return sums


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seg_dir", type=Path, help="output folder of `nes segment --mapping none`")
    ap.add_argument("--labels", type=Path, required=True, help="label PNGs (class ids), same stems")
    ap.add_argument("--images", type=Path, required=True, help="the images, same stems (for luminance)")
    ap.add_argument("--classes", nargs="+", required=True, help="ID=NAME of each class to report")
    ap.add_argument("--min-share", type=float, default=0.05, help="leave out clusters with less of the class")
    args = ap.parse_args()
    classes = {int(i): n for i, _, n in (c.partition("=") for c in args.classes)}
    for name, clusters in class_cluster_positions(args.seg_dir, args.labels, args.images, classes).items():
        total = sum(row[0] for row in clusters.values())
        print(f"{name}:")
        for cluster, (n, y, x, lum) in sorted(clusters.items(), key=lambda kv: kv[1][1] / kv[1][0]):
            if n / total >= args.min_share:
                where = f"height {y / n:.2f}, width {x / n:.2f}, luminance {lum / n:.0f}"
                print(f"  cluster {cluster}: share {n / total:.2f}, {where}")


if __name__ == "__main__":
    main()
