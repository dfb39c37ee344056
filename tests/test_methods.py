"""Per-method CPU tests on tiny inputs: shapes, finite and decreasing loss, EMA, CoBooM specifics."""

import copy
import dataclasses

import pytest
import torch

from methods import REGISTRY, build_method, method_class, resolve_config, track_methods
from methods.base import PretrainProtocol

# every registered image-track method that trains, under its class's small test settings
SSL_METHODS = sorted(name for name in track_methods("2d") if method_class(name).needs_pretraining)
SMALL_HEADS = {name: dict(method_class(name).test_params) for name in SSL_METHODS}


def tiny_protocol(steps=8, lr=1e-3, optimizer="adamw"):
    return PretrainProtocol(
        image_size=32,
        epochs=1,
        steps_per_epoch=steps,
        optimizer={"name": optimizer, "lr": lr, "weight_decay": 0.0},
        augment={"crop_scale": [0.5, 1.0], "blur_p": 0.0},
    )


def fixed_batch(n=8, size=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, size, size, generator=g) * 255).to(torch.uint8)


def train_steps(model, images, steps):
    """Train on one batch with the same augmented views every step; return the loss of each step."""
    optimizer = model.configure_optimizers()["optimizer"]
    bank = getattr(getattr(model, "criterion", None), "memory_bank", None)
    if bank is not None and bank.size[0] > 0:
        # a MoCo queue filled with this one batch's keys turns positives into negatives; keep its random keys
        # (the queue itself is tested in test_method_roster.py)
        bank._dequeue_and_enqueue = lambda *args, **kwargs: None
    torch.manual_seed(123)
    views = model.make_views(images)
    losses = []
    for step in range(steps):
        model.train()
        loss = model.compute_loss(views, images)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.on_train_batch_end(None, None, step)
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("name", SSL_METHODS)
def test_loss_finite_and_decreases_on_fixed_batch(name):
    torch.manual_seed(0)
    model = build_method(name, tiny_protocol(), SMALL_HEADS[name])
    losses = train_steps(model, fixed_batch(), steps=8)
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, f"{name} loss did not decrease: {losses}"


@pytest.mark.parametrize("name", SSL_METHODS)
def test_trains_at_a_side_that_is_not_a_multiple_of_32(name):
    # the quick suite's 48 px: ResNet-18's 2x2 last map upsamples to 64 px in decoders without skips (PCRLv2)
    protocol = dataclasses.replace(tiny_protocol(), image_size=48)
    losses = train_steps(build_method(name, protocol, SMALL_HEADS[name]), fixed_batch(n=4, size=64), steps=1)
    assert all(torch.isfinite(torch.tensor(losses))), losses


@pytest.mark.parametrize("name", SSL_METHODS)
def test_views_and_encoder_shapes(name):
    model = build_method(name, tiny_protocol(), SMALL_HEADS[name])
    images = fixed_batch(n=4)
    views = model.make_views(images)
    assert len(views) >= model.n_views and all(v.shape == (4, 1, 32, 32) for v in views[: model.n_views])
    assert model.backbone(views[0]).shape == (4, 512)
    state = model.encoder_state_dict()
    assert "layer4.1.bn2.running_var" in state and "fc.weight" not in state


def test_ema_momentum_follows_cosine_schedule():
    model = build_method("byol", tiny_protocol(steps=100), SMALL_HEADS["byol"])
    assert model.ema_momentum(0.996, step=0) == pytest.approx(0.996)
    assert model.ema_momentum(0.996, step=50) == pytest.approx(0.998)
    assert model.ema_momentum(0.996, step=100) == pytest.approx(1.0)


def test_supervised_is_seeded_random_init():
    torch.manual_seed(1)
    a = build_method("supervised", tiny_protocol()).encoder_state_dict()
    torch.manual_seed(1)
    b = build_method("supervised", tiny_protocol()).encoder_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not REGISTRY["supervised"].target.endswith("SSL")


def test_random_init_gets_the_batchnorm_statistics_of_the_corpus():
    images = fixed_batch(n=24, size=40)
    torch.manual_seed(1)
    model = build_method("supervised", tiny_protocol())
    weights = copy.deepcopy(model.backbone.state_dict())
    model.finish_encoder(images, 8, seed=5)
    norm = model.backbone.bn1
    assert not model.backbone.training and norm.momentum == 0.1 and int(norm.num_batches_tracked) == 3
    # the cumulative average over the corpus's views (momentum None), not an exponential one: with the same views
    # (batches of equal size), the first BatchNorm's running mean is the mean of the first convolution's output
    torch.manual_seed(5)
    order = torch.randperm(24, generator=torch.Generator().manual_seed(5)).split(8)
    with torch.no_grad():
        conv = torch.cat([model.backbone.conv1(model.make_views(images[b])[0]) for b in order])
    torch.testing.assert_close(norm.running_mean, conv.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    # only buffers change: the weights stay the seeded random initialisation
    assert all(
        torch.equal(weights[k], v)
        for k, v in model.backbone.state_dict().items()
        if "running" not in k and "num_batches" not in k
    )
    untouched = build_method("supervised", tiny_protocol(), {"batchnorm_statistics": "init"})
    untouched.finish_encoder(images, 8, seed=0)
    assert torch.equal(untouched.backbone.bn1.running_mean, torch.zeros(64)) and torch.equal(
        untouched.backbone.bn1.running_var, torch.ones(64)
    )
    with pytest.raises(ValueError, match="batchnorm_statistics"):
        build_method("supervised", tiny_protocol(), {"batchnorm_statistics": "imagenet"})


def test_coboom_ablations_are_config_switches_of_one_class():
    full = build_method("coboom", tiny_protocol(), SMALL_HEADS["coboom"])
    nodec = build_method("coboom-nodec", tiny_protocol(), SMALL_HEADS["coboom-nodec"])
    nodf = build_method("coboom-nodf", tiny_protocol(), SMALL_HEADS["coboom-nodf"])
    assert type(full) is type(nodec) is type(nodf)
    assert full.decoder is not None and full.diversifuse is not None
    assert nodec.decoder is None and nodec.diversifuse is not None
    assert nodf.decoder is None and nodf.diversifuse is None
    assert resolve_config("coboom-nodf").use_decoder is False


def test_coboom_quantizer_uses_spatial_tokens_and_nearest_codes():
    model = build_method("coboom", tiny_protocol(), SMALL_HEADS["coboom"])
    model.train()
    target_map = torch.randn(2, 512, 3, 3)
    fused, codebook_loss, commitment_loss = model.quantize_and_fuse(target_map)
    assert fused.shape == target_map.shape
    assert torch.isclose(codebook_loss, commitment_loss)  # same squared distance, different stop-gradients
    # data initialisation put every code on a target vector; the nearest code of a vector is the closest row
    vectors = target_map.flatten(2).transpose(1, 2).reshape(-1, 512)
    _, _, _, idx = model.quantizer(vectors)
    brute = torch.cdist(vectors, model.quantizer.codebook).argmin(1)
    assert torch.equal(idx, brute)
    # mixed precision must not change which code is nearest, even among codes much closer to each other than to 0
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.quantizer.codebook.copy_(torch.randn(1, 512, generator=g) + 0.05 * torch.randn(32, 512, generator=g))
    near = model.quantizer.codebook.detach()[torch.arange(18) % 32] + 0.02 * torch.randn(18, 512, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, _, _, idx_amp = model.quantizer(near)
    assert torch.equal(idx_amp, torch.cdist(near, model.quantizer.codebook.detach()).argmin(1))
    stats = model.quantizer.usage_statistics()
    assert 1.0 <= stats["codebook_perplexity"] <= 32 and 0.0 <= stats["codebook_dead_share"] < 1.0


def test_coboom_codebook_learns_by_codebook_loss_only():
    model = build_method("coboom-nodec", tiny_protocol(), SMALL_HEADS["coboom-nodec"])
    model.train()
    images = fixed_batch(n=4)
    out = model.compute_loss(model.make_views(images), images)
    out["codebook"].backward(retain_graph=True)
    assert model.quantizer.codebook.grad is not None and model.quantizer.codebook.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone_target.parameters())
    for term in ("l1", "l2", "codebook", "commitment"):
        assert torch.isfinite(out[term])


def test_unknown_method_and_setting_are_clear_errors():
    from methods import UnknownMethodError

    with pytest.raises(UnknownMethodError, match="known methods"):
        build_method("nope", tiny_protocol())
    with pytest.raises(ValueError, match="has no settings \\['nope'\\]"):
        resolve_config("simclr", {"nope": 1})
