"""A per-evaluation report: `report.md` beside `metrics.json`, with the scores, a per-class IoU
bar chart, the row-normalised K x C confusion matrix, the training curves and a grid of sample
images (input / ground truth / prediction / K-means prediction when a K-means run of the same
backbone, K and seed was evaluated alike). The workflow marks the figures for `snakemake --report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import paths
from .formats import save_figure, write_text
from .visualise import colourise, palette, save_panel

PER_CLASS, CONFUSION, SAMPLES = (
    paths.name(p) for p in (paths.PER_CLASS_FIGURE, paths.CONFUSION_FIGURE, paths.SAMPLES_FIGURE)
)
FIGURES = (PER_CLASS, CONFUSION, SAMPLES)
OVERLAYS = paths.name(paths.OVERLAYS)


def plot_per_class_iou(metrics: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(metrics["per_class_iou"])
    major = [100 * (metrics["per_class_iou"][n] or 0) for n in names]
    hung = [100 * (metrics["per_class_iou_hungarian"][n] or 0) for n in names]
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 1.5 + 0.22 * len(names)))
    ax.barh(y - 0.2, major, height=0.4, label=f"majority vote (mIoU {100 * metrics['miou']:.1f})")
    ax.barh(y + 0.2, hung, height=0.4, label=f"Hungarian (mIoU {100 * metrics['miou_hungarian']:.1f})")
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("IoU (%)")
    ax.set_xlim(0, 100)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_confusion(metrics: dict[str, Any], path: Path) -> None:
    """Rows: clusters, sorted by the class majority voting gave them; each row sums to 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = np.asarray(metrics["confusion"], dtype=np.float64)
    rows = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    used = np.flatnonzero(conf.sum(1) > 0)  # clusters no pixel fell into have no row to show
    order = used[np.argsort(np.asarray(metrics["mapping"])[used], kind="stable")]
    names = list(metrics["per_class_iou"])
    fig, ax = plt.subplots(figsize=(2 + 0.18 * len(names), 2 + min(0.05 * len(order), 10)))
    im = ax.imshow(rows[order], aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(np.arange(len(names)), names, rotation=90, fontsize=6)
    ax.set_ylabel(f"{len(order)} of {len(conf)} clusters in use (sorted by assigned class)")
    fig.colorbar(im, ax=ax, label="fraction of the cluster's pixels")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def sample_grid(eval_dir: Path, compare_dir: Path | None, class_names: list[str], path: Path) -> int:
    """Columns input / ground truth / prediction (/ K-means prediction), one row per sample image
    of this evaluation; returns the number of rows."""
    colours = palette(max(len(class_names), 1))
    sources = [(eval_dir, "truth"), (eval_dir, "prediction")] + ([(compare_dir, "prediction")] if compare_dir else [])
    columns: list[list[np.ndarray]] = [[] for _ in range(1 + len(sources))]
    for image_path in sorted((eval_dir / OVERLAYS / "samples").glob("*_image.png")):
        stem = image_path.name[: -len("_image.png")]
        columns[0].append(np.asarray(Image.open(image_path).convert("RGB")))
        for column, (folder, name) in zip(columns[1:], sources):
            labels = np.asarray(Image.open(folder / OVERLAYS / "samples" / f"{stem}_{name}.png")).astype(np.int64)
            column.append(colourise(np.where(labels == 255, -1, labels), colours))
    if not columns[0]:
        return 0
    titles = ["input", "ground truth", "prediction"] + (["K-means prediction"] if compare_dir else [])
    save_panel([np.concatenate(c, axis=0) for c in columns], titles, path)
    return len(columns[0])


def write_report(eval_dir: Path, metrics: dict[str, Any], compare_dir: Path | None = None) -> Path:
    eval_dir = Path(eval_dir)
    plot_per_class_iou(metrics, eval_dir / PER_CLASS)
    plot_confusion(metrics, eval_dir / CONFUSION)
    if compare_dir is not None and not (Path(compare_dir) / OVERLAYS / "samples").is_dir():
        compare_dir = None
    rows = sample_grid(eval_dir, compare_dir, list(metrics["per_class_iou"]), eval_dir / SAMPLES)
    if not rows:  # the figure is an output of the workflow: say why it is empty
        save_panel(
            [np.full((24, 360, 3), 255, np.uint8)],
            ["no sample images (evaluate.overlays is 0)"],
            eval_dir / SAMPLES,
        )
    lines = [
        f"# {metrics['run']} on {metrics['dataset']} ({metrics['protocol']}, {metrics['split']})",
        "",
        "| scores (%) | Acc | mIoU |",
        "|---|---|---|",
        f"| majority vote | {100 * metrics['acc']:.1f} | {100 * metrics['miou']:.1f} |",
        f"| Hungarian | {100 * metrics['acc_hungarian']:.1f} | {100 * metrics['miou_hungarian']:.1f} |",
    ]
    if "crf" in metrics:
        c = metrics["crf"]
        lines += [
            f"| majority vote + CRF | {100 * c['acc']:.1f} | {100 * c['miou']:.1f} |",
            f"| Hungarian + CRF | {100 * c['acc_hungarian']:.1f} | {100 * c['miou_hungarian']:.1f} |",
        ]
    lines += [
        "",
        f"{metrics['method']}, backbone {metrics['backbone']}, K = {metrics['K']}, seed {metrics['seed']}, "
        f"{metrics['num_images']} images.",
        "",
        "## Per-class IoU",
        "",
        f"![per-class IoU]({PER_CLASS})",
        "",
        "## Confusion (clusters x classes, row-normalised)",
        "",
        f"![confusion]({CONFUSION})",
        "",
    ]
    curves = paths.name(paths.CURVES)
    if (eval_dir.parent / curves).is_file():
        lines += ["## Training curves", "", f"![training curves](../{curves})", ""]
    if rows:
        lines += [
            "## Samples",
            "",
            f"![samples]({SAMPLES})",
            "",
            f"Per-image panels with overlays: [{OVERLAYS}/]({OVERLAYS}/).",
            "",
        ]
    out = eval_dir / paths.name(paths.EVALUATION_REPORT)
    write_text(out, "\n".join(lines))
    return out
