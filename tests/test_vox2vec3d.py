"""vox2vec 3D (issue 21): FPN3d as the official code, voxel embeddings, body mask, view sampling, augmentations, loss."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from methods.vox2vec3d import (
    EpochOfSteps,
    FPN3d,
    Projector,
    VolumeSteps,
    Vox2Vec3d,
    Vox2Vec3dConfig,
    augment_view,
    body_mask,
    sample_box,
    sample_pair,
    sample_step,
    voxel_embeddings,
)


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_fpn3d_sizes_are_the_official_ones():
    assert count(FPN3d(1, 16, 6)) == 47_624_448  # spec: 47.6 M
    assert count(FPN3d(1, 8, 5)) == 2_976_832  # spec: 2.98 M
    assert count(Projector(1008)) == 2_167_328  # spec: 2.17 M
    assert FPN3d(1, 16, 6).embedding_dim == 1008 and FPN3d(1, 8, 5).embedding_dim == 248


def test_fpn3d_levels_and_voxel_embeddings_are_nearest_upsampling():
    torch.manual_seed(0)
    net = FPN3d(1, 8, 5).eval()
    levels = net(torch.rand(2, 1, 32, 32, 16))
    assert [tuple(level.shape[1:]) for level in levels] == [
        (8, 32, 32, 16),
        (16, 16, 16, 8),
        (32, 8, 8, 4),
        (64, 4, 4, 2),
        (128, 2, 2, 1),
    ]
    odd = net(torch.rand(1, 1, 30, 22, 10))  # ceil-mode pooling, decoder crops back to the skip's shape
    assert tuple(odd[0].shape[2:]) == (30, 22, 10)
    voxels = torch.tensor([[0, 0, 0], [31, 17, 9], [5, 30, 15]])
    patch = torch.tensor([0, 1, 1])
    vectors = voxel_embeddings(levels, patch, voxels)
    upsampled = torch.cat(
        [F.interpolate(level, scale_factor=2**i, mode="nearest") for i, level in enumerate(levels)], dim=1
    )
    expected = torch.stack([upsampled[p, :, v[0], v[1], v[2]] for p, v in zip(patch, voxels)])
    assert vectors.shape == (3, 248) and torch.allclose(vectors, expected)


def phantom_volume():
    """Air around an elliptic body with internal air (a lung) that touches no border."""
    x, y, z = np.meshgrid(np.arange(48), np.arange(40), np.arange(24), indexing="ij")
    volume = np.full((48, 40, 24), -1000, np.int16)
    body = ((x - 24) / 20) ** 2 + ((y - 20) / 16) ** 2 <= 1
    volume[body] = 40
    volume[((x - 16) / 5) ** 2 + ((y - 20) / 5) ** 2 <= 1] = -850
    volume[(x - 30) ** 2 + (y - 20) ** 2 + (z - 12) ** 2 <= 16] = 120
    return volume, body


def test_body_mask_keeps_internal_air():
    volume, body = phantom_volume()
    mask = body_mask(volume)
    assert np.array_equal(mask, body)  # the lung is inside the body, the air around it is not
    assert mask[16, 20, 5] and not mask[0, 0, 0]


def test_positives_are_the_same_physical_voxel_in_both_views():
    volume, _ = phantom_volume()
    mask = body_mask(volume)
    rng = np.random.default_rng(0)
    for _ in range(20):
        first, second, va, vb = sample_pair(volume, mask, (16, 16, 8), 64, rng)
        assert first.shape == second.shape == (16, 16, 8) and 0 < len(va) <= 64 and va.shape == vb.shape
        assert ((va >= 0) & (va < (16, 16, 8))).all() and ((vb >= 0) & (vb < (16, 16, 8))).all()
        assert np.array_equal(first[tuple(va.T)], second[tuple(vb.T)])  # raw HU of the same voxel
        offset = vb - va  # one translation for every positive: the difference of the two boxes' corners
        assert (offset == offset[0]).all()
    anchor = np.array([40, 3, 20])
    starts = np.array([sample_box((48, 40, 24), (16, 16, 8), anchor, rng) for _ in range(200)])
    assert ((starts <= anchor) & (starts + (16, 16, 8) > anchor)).all() and (starts + (16, 16, 8) <= (48, 40, 24)).all()
    assert set(starts[:, 0]) == set(range(25, 33))  # every box that contains the anchor occurs


def test_augmentations_are_seeded_and_end_in_the_unit_window():
    volume, _ = phantom_volume()
    patch = volume[:16, :16, :8]
    a, b = augment_view(patch, np.random.default_rng(3)), augment_view(patch, np.random.default_rng(3))
    assert torch.equal(a, b) and a.shape == (1, 16, 16, 8) and a.dtype == torch.float32
    views = [augment_view(patch, np.random.default_rng(seed)) for seed in range(20)]
    assert all(0.0 <= float(v.min()) and float(v.max()) <= 1.0 for v in views)
    assert len({round(float(v.mean()), 4) for v in views}) > 10  # random windows, noise, blur or sharpening


def tiny_method(epochs=2, steps=2):
    from methods.base import PretrainProtocol

    protocol = PretrainProtocol(
        in_channels=1,
        epochs=epochs,
        steps_per_epoch=steps,
        optimizer={"name": "adam", "lr": 1e-3},
        schedule={"name": "constant"},
    )
    return Vox2Vec3d(
        Vox2Vec3dConfig(
            base_channels=4, num_levels=4, patch_size=(16, 16, 8), pairs_per_step=2, max_voxels_per_pair=64
        ),
        protocol,
    )


def test_loss_is_finite_and_decreases_on_a_fixed_batch():
    volume, _ = phantom_volume()
    batch = sample_step(volume, body_mask(volume), (16, 16, 8), pairs=2, max_voxels=64, rng=np.random.default_rng(0))
    torch.manual_seed(0)
    model = tiny_method()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = model.compute_loss(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), model.config.gradient_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.1, losses


def test_a_patch_larger_than_the_volume_is_refused():
    volume, _ = phantom_volume()
    with pytest.raises(ValueError, match="smaller than the patch"):
        sample_pair(volume, body_mask(volume), (64, 16, 8), 8, np.random.default_rng(0))


def test_evaluation_heads_official_sizes_and_the_linear_head_is_linear_in_the_embedding():
    from methods.vox2vec3d import FPNLinearHead, FPNNonLinearHead

    channels = FPN3d(1, 16, 6).level_channels
    assert (
        count(FPNLinearHead(channels, 13)) == 13_117 and round(count(FPNNonLinearHead(channels, 13)) / 1e6, 2) == 0.97
    )  # spec: 13 k, 0.97 M
    torch.manual_seed(0)
    net = FPN3d(1, 4, 4).eval()
    levels = net(torch.rand(1, 1, 16, 16, 8))
    head = FPNLinearHead(net.level_channels, 3)
    out = head(levels)
    assert out.shape == (1, 3, 16, 16, 8) and FPNNonLinearHead(net.level_channels, 3)(levels).shape == (1, 3, 16, 16, 8)
    weight = torch.cat([layer.weight.flatten(1) for layer in head.layers], dim=1)  # 3 x embedding_dim
    voxels = torch.tensor([[0, 0, 0], [15, 9, 7], [8, 3, 2]])
    expected = voxel_embeddings(levels, torch.zeros(3, dtype=torch.long), voxels) @ weight.t() + head.layers[0].bias
    assert torch.allclose(torch.stack([out[0, :, v[0], v[1], v[2]] for v in voxels]), expected, atol=1e-5)


def test_dice_matches_the_official_formula_with_absent_organs():
    from medssl.evaluate.segment3d import dice_scores

    labels = torch.zeros(6, 6, 4, dtype=torch.long)
    labels[:3, :3] = 1  # organ 1: 36 voxels
    labels[4:, 4:, :2] = 2  # organ 2: 8 voxels; organ 3 absent
    probabilities = torch.zeros(3, 6, 6, 4)
    probabilities[0, :3, :2] = 0.9  # 24 of organ 1's voxels
    probabilities[0, 5, 5, 3] = 0.7  # one false positive
    probabilities[1] = 0.1  # organ 2 missed
    probabilities[2] = 0.2  # organ 3 absent and not predicted
    official = lambda p, g: (2 * (p & g).sum() + 1e-5) / (p.sum() + g.sum() + 1e-5)
    expected = [official(probabilities[k].numpy() >= 0.5, labels.numpy() == k + 1) for k in range(3)]
    assert np.allclose(dice_scores(probabilities, labels), expected, atol=1e-5)  # the official +1e-5 terms
    assert np.allclose(expected, [48 / 61, 0.0, 1.0], atol=1e-5)
    probabilities[2, 0, 0, 0] = 0.9  # an absent organ predicted somewhere scores 0
    assert dice_scores(probabilities, labels)[2] == 0.0


def test_sliding_window_of_a_voxelwise_predictor_is_the_whole_volume_prediction():
    from medssl.evaluate.segment3d import predict_volume

    torch.manual_seed(0)
    volume = torch.rand(1, 21, 18, 11)
    body = volume > 0.2
    predictor = lambda x: torch.cat([4 * x - 2, 2 - 4 * x], dim=1)  # voxel by voxel: windows cannot change it
    whole = torch.sigmoid(predictor(volume[None]))[0] * body
    assert torch.allclose(predict_volume(predictor, volume, (8, 8, 4), body), whole, atol=1e-6)


def test_segmentation_loss_is_the_official_formula():
    from medssl.evaluate.segment3d import one_hot_organs, segmentation_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 5, 4)
    labels = torch.randint(0, 4, (2, 6, 5, 4))
    body = torch.rand(2, 1, 6, 5, 4) > 0.3
    targets = one_hot_organs(labels, 3)
    p, g, m = torch.sigmoid(logits) * body, targets * body, body.float()
    bce = (F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * m).sum() / (m.sum() * 3)
    dice = (1 - 2 * (p * g).sum((2, 3, 4)) / ((p**2).sum((2, 3, 4)) + (g**2).sum((2, 3, 4)) + 1)).mean()
    assert torch.allclose(segmentation_loss(logits, targets, body), bce + dice, atol=1e-6)


class CrashInSecondEpoch(__import__("pytorch_lightning").Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def fit(run_dir, callbacks=()):
    """Two epochs of two steps on two small volumes with Lightning, resuming from ``run_dir/last.ckpt`` if there."""
    import pytorch_lightning as pl

    pl.seed_everything(0, verbose=False)
    model = tiny_method()
    volume = phantom_volume()[0]
    steps = VolumeSteps([volume, volume[::-1].copy()], (16, 16, 8), pairs=2, max_voxels=64, steps_per_epoch=2, seed=0)
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=run_dir, filename="last", every_n_epochs=1, save_top_k=1, enable_version_counter=False
    )
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[EpochOfSteps(steps), checkpoint, *callbacks],
    )
    resume = run_dir / "last.ckpt"
    trainer.fit(model, steps, ckpt_path=str(resume) if resume.exists() else None, weights_only=True)
    return model


def test_pretraining_with_lightning_resumes_bit_identically(tmp_path):
    """The official loop's pieces on the shared base under Lightning: Adam, constant lr, gradient clipping, batches
    seeded by (seed, epoch, step); killed in the second epoch and resumed, the FPN ends as the uninterrupted one."""
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path / "crashed", [CrashInSecondEpoch()])
    resumed = fit(tmp_path / "crashed").encoder_state_dict()
    uninterrupted = fit(tmp_path / "whole").encoder_state_dict()
    assert resumed.keys() == uninterrupted.keys() and all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    assert any(k.startswith("stem.") for k in resumed)  # the exported encoder is the FPN


def test_steps_refuse_volumes_smaller_than_the_patch():
    volume, _ = phantom_volume()
    with pytest.raises(ValueError, match="smaller than the patch"):
        VolumeSteps([volume], (64, 16, 8), 2, 8, 1, 0)


def test_every_step_clips_the_gradient_norm_at_the_configured_value(tmp_path, monkeypatch):
    seen = []
    original = Vox2Vec3d.clip_gradients
    monkeypatch.setattr(
        Vox2Vec3d,
        "clip_gradients",
        lambda self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None: (
            seen.append((gradient_clip_val, gradient_clip_algorithm)),
            original(self, optimizer, gradient_clip_val, gradient_clip_algorithm),
        )[1],
    )
    fit(tmp_path)
    assert seen == [(1.0, "norm")] * 4  # 2 epochs x 2 steps, the official clipping


def toy_ct(n=4):
    """Small volumes: a body with a bright 'spleen' (1) and a dimmer 'liver' (6) block, placed per case."""
    volumes, labels = [], []
    for case in range(n):
        volume = np.full((24, 24, 16), -1000, np.int16)
        volume[2:22, 2:22] = 40
        label = np.zeros(volume.shape, np.uint8)
        shift = case % 3
        label[4 + shift : 10 + shift, 4:10, 3:9] = 1
        label[12:19, 12 - shift : 19 - shift, 5:12] = 6
        volume[label == 1], volume[label == 6] = 300, 110
        volumes.append(volume)
        labels.append(label)
    return volumes, labels


@pytest.mark.parametrize("mode", ["probe", "finetune", "scratch"])
def test_fpn_segmentation_modes(mode):
    from medssl.evaluate.segment3d import train_fpn_segmentation

    volumes, labels = toy_ct()
    torch.manual_seed(0)
    encoder = FPN3d(1, 4, 3)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    settings = {
        "patch_size": [16, 16, 8],
        "epochs": 4,
        "steps_per_epoch": 3,
        "patches_per_step": 2,
        "validations": 2,
        "freeze_epochs": 2,
        "warmup_epochs": 1,
        "lr": 3e-3,
    }
    annotated = [k for k in range(1, 14) if k != 10]
    results = train_fpn_segmentation(
        encoder, mode, volumes, labels, annotated, np.array([0, 1]), np.array([2]), np.array([3]), settings, seed=0
    )
    assert set(results) == ({"linear", "nonlinear"} if mode == "probe" else {"linear"})
    for result in results.values():
        assert result["dice"].shape == (1, 13) and np.isnan(result["dice"][0, 9]) and np.isfinite(result["mean_dice"])
        assert result["best_epoch"] in (1, 3) and 0 <= result["val_value"] <= 1
    changed = any(not torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert changed == (mode != "probe")  # probing never touches the encoder, its BatchNorm statistics included


def test_finetuning_keeps_the_encoder_frozen_until_its_epoch():
    from medssl.evaluate.segment3d import train_fpn_segmentation

    volumes, labels = toy_ct()
    torch.manual_seed(0)
    encoder = FPN3d(1, 4, 3)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    settings = {
        "patch_size": [16, 16, 8],
        "epochs": 2,
        "steps_per_epoch": 2,
        "patches_per_step": 2,
        "validations": 1,
        "freeze_epochs": 2,
    }
    train_fpn_segmentation(
        encoder,
        "finetune",
        volumes,
        labels,
        range(1, 14),
        np.array([0, 1]),
        np.array([2]),
        np.array([3]),
        settings,
        seed=0,
    )
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
