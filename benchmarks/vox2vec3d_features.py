"""Are the pretrained FPN's voxel features better than a random FPN's, whatever the head's training budget?

The vox2vec3d suite's probes train their heads for 200 steps (official 45,000), so a probe row mixes two things: the
features and how far 200 steps get a head on them. This script takes the head's training out: for the suite's
stored vox2vec encoder and the random-init FPN of its random-init rows (same architecture, same seed), it embeds
whole training CTs (frozen FPN in eval mode, one pass per CT, the 1-level-per-stride voxel vector of the official
linear head), samples voxels per organ, fits an exact multinomial logistic regression (scikit-learn, L-BFGS to
convergence, standardised features) and scores the test CTs voxel by voxel with the suite's Dice (13 organs, the
official absent-organ convention, body voxels only). Diagnostic only: whole-CT embedding differs from the probes'
patch-wise one at patch borders.

    python benchmarks/vox2vec3d_features.py --suite vox2vec3d --data-root data
    python benchmarks/vox2vec3d_features.py --suite vox2vec3d --set pretrain.epochs=30   # a longer pretraining's encoder
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets import load_dataset  # noqa: E402
from medssl.evaluate.segment3d import dice_scores, window  # noqa: E402
from medssl.pretrain.encoder import load_encoder  # noqa: E402
from medssl.run.ct import build_ct_plan, random_fpn  # noqa: E402
from medssl.suite.config import load_suite  # noqa: E402
from methods.vox2vec3d import body_mask, voxel_embeddings  # noqa: E402


def embed(encoder, volume) -> torch.Tensor:
    """Per-voxel embedding of a whole CT (X x Y x Z x D), frozen encoder in eval mode."""
    with torch.no_grad():
        levels = encoder.eval()(window(volume)[None])
        shape = np.asarray(volume).shape
        grid = torch.from_numpy(np.indices(shape).reshape(3, -1).T.copy()).long()
        return voxel_embeddings(levels, torch.zeros(len(grid), dtype=torch.long), grid).reshape(*shape, -1)


def sample_voxels(labels: np.ndarray, body: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``per_class`` voxels of each organ present and of the body's background."""
    picks = []
    for organ in range(14):
        where = np.argwhere((labels == organ) & (body if organ == 0 else True))
        if len(where):
            picks.append(where[rng.choice(len(where), min(per_class, len(where)), replace=False)])
    return np.concatenate(picks)


def main(argv=None) -> int:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="vox2vec3d")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="settings",
        metavar="KEY.PATH=VALUE",
        help="suite overrides, as run_benchmark.py's --set",
    )
    parser.add_argument("--out", default="results", help="results folder of the suite's run (its checkpoints are read)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument(
        "--per-class", type=int, default=300, help="voxels sampled per organ and for the background per training CT"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    plan = build_ct_plan(load_suite(args.suite, settings=args.settings))
    probe = next(job for job in plan.eval_jobs if job.protocol == "probe")
    control = next(
        job for job in plan.eval_jobs if job.protocol == "random_probe" and job.pretrain.key == probe.pretrain.key
    )
    path = Path(args.out) / "checkpoints" / probe.pretrain.key / "encoder.pt"
    if not path.exists():
        print(f"no stored encoder at {path}; run 'python run_benchmark.py --suite {args.suite}' first", file=sys.stderr)
        return 2
    dataset = load_dataset(
        probe.task["dataset"]["name"], Path(args.data_root), **(probe.task["dataset"].get("params") or {})
    )
    encoders = {"vox2vec (stored encoder)": load_encoder(path)[0], "random-init FPN": random_fpn(control)}
    rng = np.random.default_rng(args.seed)
    train, test = dataset.indices("train"), dataset.indices("test")
    samples = {
        int(i): sample_voxels(
            np.asarray(dataset.labels[i]), body_mask(np.asarray(dataset.images[i])), args.per_class, rng
        )
        for i in train
    }
    print(
        f"{len(train)} training CTs ({sum(len(s) for s in samples.values())} voxels), {len(test)} test CTs; exact multinomial logistic regression on the voxel vector"
    )
    print("| FPN | test Dice, 13 organs (official convention) | test Dice, organs present | fit (s) |")
    print("|---|---:|---:|---:|")
    for name, encoder in encoders.items():
        start = time.time()
        features, targets = [], []
        for i, voxels in samples.items():
            embedding = embed(encoder, dataset.images[i])
            features.append(embedding[tuple(voxels.T)].numpy())
            targets.append(np.asarray(dataset.labels[i])[tuple(voxels.T)])
        scaler = StandardScaler().fit(np.concatenate(features))
        classifier = LogisticRegression(max_iter=2000).fit(
            scaler.transform(np.concatenate(features)), np.concatenate(targets)
        )
        fitted = time.time() - start
        all_organs, present = [], []
        for i in test:
            volume, labels = np.asarray(dataset.images[i]), np.array(dataset.labels[i])
            embedding = embed(encoder, volume)
            predicted = classifier.predict(
                scaler.transform(embedding.reshape(-1, embedding.shape[-1]).numpy())
            ).reshape(volume.shape)
            predicted[~body_mask(volume)] = 0
            one_hot = torch.from_numpy(np.stack([predicted == k for k in range(1, 14)]).astype(np.float32))
            scores = dice_scores(one_hot, torch.from_numpy(labels))
            all_organs.append(float(np.mean(scores)))
            present.append(float(np.mean([scores[k - 1] for k in np.unique(labels) if k > 0])))
        print(f"| {name} | {np.mean(all_organs):.3f} | {np.mean(present):.3f} | {fitted:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
