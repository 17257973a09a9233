"""psi's learned eigenfunctions beside the exact ones (docs/reproduction.md, claim j).

For evaluation images of a dataset: the first n of psi's outputs (before the Gumbel-softmax) and
beside them the exact eigenvectors of the training split's G extended to the same tokens (Nystrom:
the functions psi is trained to approximate, rule `nystrom`, method `spectral_inductive`), each
output paired with the exact eigenvector it matches best among the top K (Hungarian matching on
|cos| over every token of the split: eigenvectors of nearly equal eigenvalues have no order of
their own), its sign matched; the titles give the pair and its |cos|.

    python -m studies.eigenfunction_figure --dataset camvid --backbone lite0 \
        --run results/camvid/runs/nes-lite0-K128-a0.3-b0.16-s0 \
        --nystrom results/camvid/graphs/lite0/native/val-nystrom-camvid-K128-a0.3.npz \
        --out docs/img/camvid_eigenfunctions_exact.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from pipeline.datasets import load_dataset
from pipeline.formats import save_figure
from pipeline.models import RunModel
from pipeline.views import View
from studies.layer_probe import split_caches


def psi_outputs(model: RunModel, cache, items: np.ndarray) -> np.ndarray:
    """(N, K) psi's outputs on the cached tokens of `items`, image by image."""
    if model.psi is None:
        raise SystemExit(f"{model.spec.run}: not a run with psi (nes or nes_star)")
    out = []
    with torch.no_grad():
        for s in range(0, len(items), 16):
            inp = torch.from_numpy(cache.read(items[s : s + 16], ("input",))["input"]).float()
            out.append(model.psi(inp.flatten(1, 2)).flatten(0, 1).numpy())
    return np.concatenate(out)


def cosines(learned: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """(n_learned, n_exact) cosine between columns over all tokens."""
    a = learned / np.linalg.norm(learned, axis=0, keepdims=True)
    b = exact / np.linalg.norm(exact, axis=0, keepdims=True)
    return a.T @ b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--protocol", default=None)
    ap.add_argument("--run", required=True, help="a nes run folder")
    ap.add_argument("--nystrom", required=True, help="the exact eigenvectors extended to the evaluated split")
    ap.add_argument("--functions", type=int, default=4, help="how many eigenfunctions to draw")
    ap.add_argument("--images", type=int, default=2, help="how many evaluation images (spread over the split)")
    ap.add_argument("--out", required=True, help="a .png file")
    args = ap.parse_args()

    ds, _, val = split_caches(args.dataset, args.backbone, args.protocol)
    model = RunModel.load(Path(args.run))
    items = val.plain_items()
    learned = psi_outputs(model, val, items)
    with np.load(args.nystrom) as f:
        exact = f["embedding"].astype(np.float64)
    if exact.shape[0] != learned.shape[0]:
        raise SystemExit(
            f"{args.nystrom}: {exact.shape[0]} tokens, the {ds['eval_split']} cache has {learned.shape[0]}"
        )
    n = args.functions
    cos = cosines(learned[:, :n], exact)
    _, match = linear_sum_assignment(-np.abs(cos))
    signs = np.sign(cos[np.arange(n), match])
    signs[signs == 0] = 1
    paired = exact[:, match] * signs
    view = View.from_config({k: v for k, v in val.attrs["view_spec"].items() if v is not None})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = val.grid
    dataset = load_dataset(ds, ds["eval_split"])
    shown = np.linspace(0, len(items) - 1, args.images).round().astype(int)
    fig, axes = plt.subplots(2 * len(shown), n + 1, figsize=(2.2 * (n + 1), 2 * 2 * len(shown) * h / w + 0.6))
    for row, item_pos in enumerate(shown):
        tokens = slice(item_pos * h * w, (item_pos + 1) * h * w)
        image, _ = view.scored(dataset.load_image(int(val.image_index[items[item_pos]])), None)
        for r, (name, maps) in enumerate((("psi", learned[tokens, :n]), ("exact", paired[tokens]))):
            ax = axes[2 * row + r]
            ax[0].imshow(image)
            ax[0].set_ylabel(name)
            for j in range(n):
                limit = np.abs(maps[:, j]).max() or 1.0
                ax[j + 1].imshow(maps[:, j].reshape(h, w), cmap="RdBu_r", vmin=-limit, vmax=limit)
                if row == 0:
                    title = f"psi {j + 1}" if r == 0 else f"exact {match[j] + 1}: |cos| {abs(cos[j, match[j]]):.2f}"
                    ax[j + 1].set_title(title, fontsize=7)
            for a in ax:
                a.set_xticks([])
                a.set_yticks([])
    fig.suptitle(f"{model.spec.run}: psi's outputs (rows 'psi') and the exact eigenvectors (Nystrom)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, args.out, dpi=90)
    pairs = [(j + 1, int(match[j]) + 1, round(float(abs(cos[j, match[j]])), 3)) for j in range(n)]
    print(f"wrote {args.out}; (psi output, exact eigenvector, |cos|): {pairs}")


if __name__ == "__main__":
    main()
