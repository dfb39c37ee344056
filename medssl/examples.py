"""A picture of sample images of a dataset, with their labels and masks (README figure)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets import load_dataset


def draw_examples(dataset_name: str, data_root: Path, path: Path, n: int = 12, seed: int = 0, **params) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = load_dataset(dataset_name, data_root, **params)
    pick = np.sort(np.random.default_rng(seed).choice(len(dataset.images), size=min(n, len(dataset.images)), replace=False))
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
