"""What the 3D track costs on this machine, to size the vox2vec3d suite (issue 21): pretraining steps of vox2vec on the
CT phantoms' unlabelled patients, then probing (both heads) of that encoder and of a random one, and the same FPN
trained from scratch, on the labelled patients, with per-organ test Dice.

    python benchmarks/vox2vec3d_budget.py --steps 300 --eval-epochs 10

Prints seconds per pretraining step, seconds per evaluation and the test Dice (mean over organs present in each CT
and over organs including the absent-organ convention). One seed: a sizing run, not a comparison.
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
from medssl.evaluate.segment3d import train_fpn_segmentation  # noqa: E402
from methods.base import PretrainProtocol  # noqa: E402
from methods.vox2vec3d import FPN3d, VolumeSteps, Vox2Vec3d, Vox2Vec3dConfig  # noqa: E402


def present_mean(dice: np.ndarray, labels) -> float:
    """Mean test Dice over the organs each CT actually contains (the absent-organ 1s left out)."""
    return float(
        np.mean(
            [np.nanmean([d[k - 1] for k in np.unique(np.asarray(label)) if k > 0]) for d, label in zip(dice, labels)]
        )
    )


PATCH = (32, 32, 16)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--steps", type=int, default=300, help="pretraining steps")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--voxels", type=int, default=512)
    parser.add_argument("--eval-epochs", type=int, default=10)
    parser.add_argument("--eval-steps", type=int, default=10, help="evaluation steps per epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-4, help="evaluation learning rate (Adam)")
    parser.add_argument("--patches", type=int, default=4, help="evaluation patches per step")
    parser.add_argument("--encoder", help="keep the pretrained FPN in this file and reuse it when it exists")
    parser.add_argument("--runs", default="vox2vec,random,scratch", help="which evaluations: vox2vec, random, scratch")
    return parser.parse_args(argv)


def pretrained_fpn(args, unlabelled) -> FPN3d:
    """vox2vec pretrained for ``--steps`` on the unlabelled patients (or read from ``--encoder``)."""
    config = Vox2Vec3dConfig(
        base_channels=8, num_levels=5, patch_size=PATCH, pairs_per_step=args.pairs, max_voxels_per_pair=args.voxels
    )
    protocol = PretrainProtocol(
        in_channels=1,
        epochs=1,
        steps_per_epoch=args.steps,
        optimizer={"name": "adam", "lr": 3e-4},
        schedule={"name": "constant"},
    )
    model = Vox2Vec3d(config, protocol)
    optimizer = model.configure_optimizers()["optimizer"]
    if args.encoder and Path(args.encoder).exists():
        model.backbone.load_state_dict(torch.load(args.encoder, weights_only=True))
        print(f"pretrained FPN read from {args.encoder}")
        return model.backbone
    steps = VolumeSteps(unlabelled.images, PATCH, args.pairs, args.voxels, args.steps, args.seed)
    start, losses = time.time(), []
    for batch in steps:
        loss = model.compute_loss(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.gradient_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    pretrain_s = time.time() - start
    print(
        f"pretraining: {args.steps} steps in {pretrain_s:.0f} s ({pretrain_s / args.steps:.2f} s/step); loss {np.mean(losses[:10]):.3f} -> {np.mean(losses[-10:]):.3f}"
    )
    if args.encoder:
        torch.save(model.backbone.state_dict(), args.encoder)
    return model.backbone


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    unlabelled = load_dataset("synthetic_ct", Path(args.data_root), part="unlabelled")
    labelled = load_dataset("synthetic_ct", Path(args.data_root), part="labelled")
    torch.manual_seed(args.seed)
    backbone = pretrained_fpn(args, unlabelled)
    split = {s: labelled.indices(s) for s in ("train", "val", "test")}
    settings = {
        "patch_size": list(PATCH),
        "epochs": args.eval_epochs,
        "steps_per_epoch": args.eval_steps,
        "patches_per_step": args.patches,
        "validations": 2,
        "lr": args.lr,
        "freeze_epochs": args.eval_epochs // 2,
        "warmup_epochs": 1,
    }
    test_labels = [labelled.labels[i] for i in split["test"]]
    runs = {
        "vox2vec": ("vox2vec probe", backbone, "probe"),
        "random": ("random-init probe", FPN3d(1, 8, 5), "probe"),
        "scratch": ("from scratch", FPN3d(1, 8, 5), "scratch"),
    }
    runs = [runs[name] for name in args.runs.split(",")]
    print("| encoder | head | seconds | test Dice, organs present | test Dice, 13 organs (absent = 1 if empty) |")
    print("|---|---|---:|---:|---:|")
    for name, encoder, mode in runs:
        torch.manual_seed(args.seed)
        start = time.time()
        results = train_fpn_segmentation(
            encoder,
            mode,
            labelled.images,
            labelled.labels,
            labelled.annotated,
            split["train"],
            split["val"],
            split["test"],
            settings,
            args.seed,
        )
        seconds = time.time() - start
        for head, result in results.items():
            print(
                f"| {name} | {head} | {seconds:.0f} | {present_mean(result['dice'], test_labels):.3f} | {result['mean_dice']:.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
