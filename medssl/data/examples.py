"""A picture of sample images of a dataset, with their labels and masks (figures of docs/getting-started.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets import load_dataset
from datasets.volumes import ORGANS


def draw_examples(dataset_name: str, data_root: Path, path: Path, n: int = 12, seed: int = 0, **params) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = load_dataset(dataset_name, data_root, **params)
    if hasattr(dataset, "case_ids"):
        return draw_volumes(dataset, path, plt, n=min(n, 4), seed=seed)
    pick = np.sort(
        np.random.default_rng(seed).choice(len(dataset.images), size=min(n, len(dataset.images)), replace=False)
    )
    cols = min(6, len(pick))
    rows = int(np.ceil(len(pick) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, pick):
        image = np.asarray(dataset.images[i])
        ax.imshow(image[0] if dataset.channels == 1 else image.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=255)
        if dataset.masks is not None and dataset.masks[i].any():
            ax.contour(np.asarray(dataset.masks[i]), levels=[0.5], colors="red", linewidths=0.8)
        findings = [c for c, v in zip(dataset.class_names, dataset.labels[i]) if v] or ["no finding"]
        ax.set_title(f"patient {dataset.patient_ids[i]}\n" + ", ".join(findings), fontsize=7)
    mask_note = f"; red outline = {dataset.mask_name} mask" if dataset.masks is not None else ""
    fig.suptitle(f"{dataset_name}: random samples{mask_note}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def draw_volumes(dataset, path: Path, plt, n: int = 4, seed: int = 0) -> Path:
    """CT volumes (datasets/volumes.py): per case an axial slice through the liver's centre and a coronal slice
    through the kidneys', HU window [-200, 300], organ labels as coloured overlay."""
    from matplotlib.colors import ListedColormap

    pick = np.sort(
        np.random.default_rng(seed).choice(len(dataset.images), size=min(n, len(dataset.images)), replace=False)
    )
    colours = ListedColormap(plt.get_cmap("tab20")(np.linspace(0, 1, 20))[: len(ORGANS)])
    fig, axes = plt.subplots(2, len(pick), figsize=(3.2 * len(pick), 6.0), squeeze=False)
    for column, i in enumerate(pick):
        image = np.asarray(dataset.images[i], dtype=np.float32)
        labels = np.asarray(dataset.labels[i]) if dataset.labels is not None else np.zeros(image.shape, np.uint8)

        def centre(organ: int, axis: int) -> int:
            where = np.argwhere(labels == organ)
            return int(where[:, axis].mean()) if len(where) else image.shape[axis] // 2

        # RAS arrays shown radiologically: patient's right on the left of the picture, anterior / superior up
        views = [
            (image[:, :, centre(6, 2)], labels[:, :, centre(6, 2)], "axial"),
            (image[:, centre(2, 1), :], labels[:, centre(2, 1), :], "coronal"),
        ]
        for row, (hu, organ, name) in enumerate(views):
            ax = axes[row][column]
            spacing = dataset.spacing
            aspect = spacing[1] / spacing[0] if name == "axial" else spacing[2] / spacing[0]
            ax.imshow(hu.T[::-1, ::-1], cmap="gray", vmin=-200, vmax=300, aspect=aspect)
            overlay = np.ma.masked_equal(organ.T[::-1, ::-1].astype(float), 0)
            ax.imshow(
                overlay - 1,
                cmap=colours,
                vmin=0,
                vmax=len(ORGANS) - 1,
                alpha=0.45,
                aspect=aspect,
                interpolation="nearest",
            )
            ax.set_title(f"{dataset.case_ids[i]} {name}", fontsize=8)
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(k)) for k in range(len(ORGANS))]
    fig.legend(handles, ORGANS, loc="lower center", ncol=7, fontsize=7, frameon=False)
    fig.suptitle(
        f"{dataset.name}: axial (through the liver) and coronal (through the right kidney) slices, labels overlaid",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
