"""Method-specific behaviour of the roster beyond the shared checks of test_methods.py: loss formulas against hand
computations, queues, prototypes, the adversary, restoration targets and pixel correspondences."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_methods import SMALL_HEADS, fixed_batch, tiny_protocol, train_steps

from medssl.nn.augment import apply_crop_boxes
from methods import build_method
from methods.dira import restoration_distortion


def no_photometric_protocol(**augment):
    protocol = tiny_protocol()
    protocol.augment = {"crop_scale": [0.3, 1.0], "intensity_p": 0.0, "blur_p": 0.0, **augment}
    return protocol


def test_vicreg_loss_matches_hand_computation():
    model = build_method("vicreg", tiny_protocol(), SMALL_HEADS["vicreg"])
    g = np.random.default_rng(0)
    a, b = g.normal(size=(6, 4)), g.normal(size=(6, 4)) * 0.3
    invariance = np.mean((a - b) ** 2)
    variance = np.mean([np.mean(np.maximum(0, 1 - np.sqrt(x.var(0, ddof=1) + 1e-4))) for x in (a, b)])
    covariance = 0.0
    for x in (a, b):
        c = np.cov(x, rowvar=False)
        covariance += (np.sum(c**2) - np.sum(np.diag(c) ** 2)) / 4
    expected = 25 * invariance + 25 * variance + covariance
    got = model.criterion(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_moco_queue_loss_matches_infonce_with_known_logits():
    model = build_method("caid", tiny_protocol(), {**SMALL_HEADS["caid"], "output_dim": 2, "queue_size": 3})
    bank = model.criterion.memory_bank
    negatives = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    bank.bank = negatives.clone()  # stored as (size, dim)
    bank.bank_ptr.zero_()
    query, key = torch.tensor([[1.0, 0.0]], requires_grad=True), torch.tensor([[0.8, 0.6]])
    loss = model.criterion(query, key)
    logits = torch.tensor([0.8, 0.0, -1.0, 0.6]) / 0.2
    assert float(loss.detach()) == pytest.approx(float(-F.log_softmax(logits, 0)[0]), rel=1e-5)
    # the key was enqueued after use: the queue now starts with it
    assert torch.allclose(bank.bank[0], key[0])


def test_nt_xent_over_pixels_matches_hand_computation():
    model = build_method("vox2vec2d", tiny_protocol(), SMALL_HEADS["vox2vec2d"])
    e1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    e2 = torch.tensor([[0.6, 0.8], [0.8, -0.6]])
    t = model.config.temperature
    expected = 0.0
    for anchors, others in ((e1, e2), (e2, e1)):
        for i in range(2):
            pos = anchors[i] @ others[i] / t
            negs = [anchors[i] @ anchors[j] / t for j in range(2) if j != i] + [
                anchors[i] @ others[j] / t for j in range(2) if j != i
            ]
            expected += -(pos - torch.logsumexp(torch.stack([pos] + negs), 0)) / 4
    assert float(model.criterion(e1, e2)) == pytest.approx(float(expected), rel=1e-5)


def test_swav_prototypes_normalised_frozen_in_first_epoch_and_queue_fills_before_use():
    frozen = build_method("swav", tiny_protocol(steps=4), {**SMALL_HEADS["swav"], "freeze_prototypes_share": 0.25})
    frozen.train()
    images = fixed_batch(n=4)
    frozen.compute_loss(frozen.make_views(images), images)["loss"].backward()
    frozen.on_after_backward()  # Lightning's hook between backward and the optimiser step
    assert all(p.grad is None for p in frozen.prototypes.parameters()), "prototypes must not learn in the first epoch"
    assert torch.allclose(frozen.prototypes.heads[0].weight.norm(dim=1), torch.ones(16))

    model = build_method("swav", tiny_protocol(), {**SMALL_HEADS["swav"], "queue_length": 8, "queue_start_share": 0.0})
    model.train()
    seen = []
    for _ in range(3):
        views = model.make_views(images)
        in_use_before = model.queue_in_use()
        out = model.compute_loss(views, images)
        out["loss"].backward()
        seen.append(in_use_before)
    assert seen == [False, False, True], "the queue joins Sinkhorn only once full"
    latest = torch.stack([model.embed(v) for v in views[:2]]).detach()
    assert model.queue.shape == (2, 8, 32) and int(model.queue_filled) == 12
    assert torch.allclose(latest, model.queue[:, :4], atol=1e-5), "the newest embeddings go first"
    assert not torch.allclose(model.queue[:, :4], model.queue[:, 4:])


def test_dira_restoration_target_is_the_view_after_crop_and_flip_before_intensity():
    protocol = no_photometric_protocol(hflip_p=1.0)
    model = build_method("dira", protocol, {**SMALL_HEADS["dira"], "distortions": False})
    images = fixed_batch(n=3)
    query, _, target = model.make_views(images)
    unnormalised = query * model.normalize.std + model.normalize.mean
    assert torch.allclose(unnormalised, target, atol=1e-5)
    # with intensity augmentation on, the input changes but the target does not carry it
    model = build_method(
        "dira", no_photometric_protocol(intensity_p=1.0, brightness=0.5), {**SMALL_HEADS["dira"], "distortions": False}
    )
    torch.manual_seed(0)
    query, _, target = model.make_views(images)
    assert not torch.allclose(query * model.normalize.std + model.normalize.mean, target, atol=1e-3)


def test_dira_discriminator_trains_on_its_own_and_caid_has_none():
    torch.manual_seed(0)
    model = build_method("dira", tiny_protocol(), SMALL_HEADS["dira"])
    optimised = {id(p) for g in model.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in model.discriminator.parameters()}
    before = [p.detach().clone() for p in model.discriminator.parameters()]
    train_steps(model, fixed_batch(), steps=1)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.discriminator.parameters())), (
        "the discriminator did not step"
    )
    out = model.compute_loss(model.make_views(fixed_batch()), fixed_batch())
    assert {"discriminative", "restoration", "adversarial"} <= set(out)
    caid = build_method("caid", tiny_protocol(), SMALL_HEADS["caid"])
    assert caid.discriminator is None and caid.config.adversarial_weight == 0
    assert "adversarial" not in caid.compute_loss(caid.make_views(fixed_batch()), fixed_batch())
    assert model.ema_momentum(0.5, step=3) == 0.999  # MoCo's constant key momentum


def test_restoration_distortion_keeps_shape_and_changes_some_images():
    x = torch.rand(32, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    out = restoration_distortion(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    changed = (out != x).flatten(1).any(1)
    assert 0 < int(changed.sum()) < 32  # about a third of the images stay undistorted
    assert torch.equal(out, restoration_distortion(x, torch.Generator().manual_seed(1)))


def test_pcrlv2_decoder_has_no_skips_and_restoration_weight_decays():
    model = build_method("pcrlv2", tiny_protocol(steps=10), SMALL_HEADS["pcrlv2"])
    assert model.decoder.skips is False
    levels = model.levels(model.make_views(fixed_batch(n=2))[0])
    assert [lvl.shape[-1] for lvl in levels] == [2, 4, 8, 16, 32]
    assert model.restoration_weight() == pytest.approx(1.0)
    assert len(build_method("pcrlv2", tiny_protocol(), {"n_local_views": 1}).sampled_levels()) == 1
    with pytest.raises(ValueError, match="level_sampling"):
        build_method("pcrlv2", tiny_protocol(), {"level_sampling": "some"})


def test_mlvicx_trains_its_dense_projections_and_exports_the_plain_resnet():
    model = build_method("mlvicx", tiny_protocol(), SMALL_HEADS["mlvicx"])
    model.train()
    images = fixed_batch(n=4)
    out = model.compute_loss(model.make_views(images), images)
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.dense_projections.parameters())
    assert all(p.grad is not None for p in model.context.parameters())
    state = model.encoder_state_dict()
    assert not any(k.startswith(("context", "dense")) for k in state) and "layer4.1.bn2.running_var" in state


def test_vox2vec2d_pixel_pairs_show_the_same_image_point():
    model = build_method("vox2vec2d", no_photometric_protocol(), SMALL_HEADS["vox2vec2d"])
    ramp = torch.linspace(0, 1, 48)
    images = (255 * (ramp[None, :] * 0.7 + ramp[:, None] * 0.3)).expand(4, 1, 48, 48).to(torch.uint8)
    torch.manual_seed(0)
    first, second, coords_first, coords_second = model.make_views(images)
    assert coords_first.abs().max() <= 1 and coords_second.abs().max() <= 1, "sampled pixels must lie inside both crops"
    sample = lambda view, coords: F.grid_sample(
        view, coords[:, :, None, :], padding_mode="border", align_corners=False
    )[..., 0]
    assert torch.allclose(sample(first, coords_first), sample(second, coords_second), atol=0.05)
    assert not torch.allclose(first, second)


def test_crop_boxes_with_rotation_turn_the_image_about_the_box_centre():
    from medssl.nn.augment import AugmentConfig, draw_crop_boxes

    x = torch.zeros(2, 1, 33, 33)
    x[:, :, 16, 16] = 1.0  # centre
    x[:, :, 16, 28] = 1.0  # a marker right of the centre
    whole = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0)
    boxes = draw_crop_boxes(2, AugmentConfig(**{**whole.__dict__, "rotate_degrees": 30}))
    assert 0 < boxes.angle.abs().max() <= math.radians(30)
    boxes.angle.fill_(math.pi / 2)
    turned = apply_crop_boxes(x, 33, boxes)
    straight = apply_crop_boxes(x, 33, draw_crop_boxes(2, whole))
    assert torch.allclose(straight, x, atol=1e-5)
    assert torch.allclose(turned[:, 0, 16, 16], torch.ones(2), atol=1e-5)
    # a quarter turn moves the marker from the right of the centre onto the vertical axis
    assert turned[:, 0, 16, 28].max() < 1e-3 and (turned[:, 0, 4, 16] + turned[:, 0, 28, 16]).min() > 0.99
