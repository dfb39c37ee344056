"""One test per finding of the method audit (shared/specs/method-audit.md, "Changes results" 1-6 and "Smaller" 7-10):
each failed on the code before the fix. The general exported-BatchNorm check of every method is in
test_exported_batchnorm.py."""

import os

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import torchvision

from medssl.suite.config import load_suite
from medssl.suite.protocol import ConfigError
from methods import build_method
from methods.base import PretrainProtocol, byol_similarity_loss
from methods.dira import inpaint, outpaint, restoration_distortion, swap_patches
from tests.distributed import free_port
from tests.test_exported_batchnorm import variance_ratios
from tests.test_methods import SMALL_HEADS, fixed_batch, tiny_protocol


def settled_mlvicx(images):
    """MLVICX after enough train-mode passes for its trunk's running statistics to be those of its training path."""
    torch.manual_seed(0)
    model = build_method("mlvicx", tiny_protocol(), SMALL_HEADS["mlvicx"])
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average: a few passes settle the statistics
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model.compute_loss(model.make_views(images), images)
    return model


# 1 -------------------------------------------------------------------------------------------------------------
def test_mlvicx_exports_the_batchnorm_statistics_of_the_plain_trunk():
    images = fixed_batch(n=32, size=32)
    model = settled_mlvicx(images)
    inputs = model.unaugmented(images)
    before = variance_ratios(model.backbone, inputs)
    assert max(before.values()) > 100, "the attention path's statistics should not fit the plain trunk"
    model.finish_encoder(images, batch_size=16, seed=0)
    after = variance_ratios(model.backbone, inputs)
    assert all(0.2 < r < 5 for r in after.values()), after
    # only the statistics changed, and the exported state holds them
    state = model.encoder_state_dict()
    assert torch.equal(state["layer4.1.bn2.running_var"], model.backbone.layer4[1].bn2.running_var)


# 2 -------------------------------------------------------------------------------------------------------------
def test_inpainting_sets_official_blocks_to_zero():
    x = 0.1 + 0.9 * torch.rand(16, 1, 224, 224, generator=torch.Generator().manual_seed(0))
    out = inpaint(x, torch.Generator().manual_seed(1))
    changed = out != x
    assert changed.flatten(1).any(1).all(), "every image gets at least one block"
    assert torch.all(out[changed] == 0), "blocks are filled with exact zeros (official), not noise"
    rows = changed.any(-1)[:, 0]
    assert not rows[:, :3].any() and not rows[:, -3:].any(), "the official 3-px margin"
    # blocks of 10-70 px, 1-10 of them: at most 10 * 70 * 70 pixels
    assert int(changed.flatten(1).sum(1).max()) <= 10 * 70 * 70


def test_outpainting_keeps_windows_of_the_official_size():
    x = 0.1 + 0.9 * torch.rand(16, 1, 224, 224, generator=torch.Generator().manual_seed(0))
    out = outpaint(x, torch.Generator().manual_seed(2))
    kept = out[:, 0] != 0
    assert torch.equal(out[:, 0][kept], x[:, 0][kept]) and torch.all(out[~kept[:, None]] == 0)
    for image in kept:
        rows, cols = torch.nonzero(image.any(1)).flatten(), torch.nonzero(image.any(0)).flatten()
        # windows of side 224 - (50..70) = 154..174 px inside a 3-px margin (Models Genesis' 0.4-0.7 were smaller)
        assert 154 <= int(rows[-1] - rows[0] + 1) <= 218 and 154 <= int(cols[-1] - cols[0] + 1) <= 218
        assert int(rows[0]) >= 3 and int(cols[0]) >= 3


def test_patch_swapping_always_makes_ten_swaps():
    x = torch.rand(32, 1, 224, 224, generator=torch.Generator().manual_seed(0))
    out = swap_patches(x, torch.Generator().manual_seed(3))
    changed = (out != x).flatten(1).sum(1).float()
    # 10 swaps of two 10-15 px patches move about 2 * 10 * 12.5^2 = 3,125 pixels (less where patches overlap); the
    # old 1-10 swaps moved about half as many
    assert 2500 < float(changed.mean()) <= 2 * 10 * 15 * 15
    assert float(changed.min()) > 0


def test_distortion_mix_and_scaling_to_small_views():
    x = 0.1 + 0.9 * torch.rand(2000, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    out = restoration_distortion(x, torch.Generator().manual_seed(4))
    changed = (out != x).flatten(1).any(1)
    zeroed = (out == 0).flatten(1).any(1)
    # 30 % in-painting + 5 % out-painting set pixels to 0; 30 % swapping moves them; 35 % stay as they are
    assert 0.31 < float(zeroed.float().mean()) < 0.39
    assert 0.61 < float(changed.float().mean()) < 0.69
    assert torch.equal(out, restoration_distortion(x, torch.Generator().manual_seed(4)))


# 3 -------------------------------------------------------------------------------------------------------------
def test_coboom_blurs_both_views_always():
    model = build_method("coboom", tiny_protocol(), SMALL_HEADS["coboom"])
    assert [cfg.blur_p for cfg in model.view_augment] == [1.0, 1.0]


def coboom_whole_image_views(hflip_p):
    protocol = tiny_protocol()
    protocol.augment = {
        "crop_scale": [1.0, 1.0],
        "crop_ratio": [1.0, 1.0],
        "hflip_p": hflip_p,
        "intensity_p": 0.0,
        "blur_p": 0.0,
    }
    model = build_method("coboom", protocol, SMALL_HEADS["coboom"])
    model.view_augment = [type(cfg)(**{**cfg.__dict__, "blur_p": 0.0}) for cfg in model.view_augment]
    return model


@pytest.mark.parametrize("hflip_p", [0.0, 1.0])
def test_coboom_reconstruction_target_is_mirrored_with_its_view(hflip_p):
    model = coboom_whole_image_views(hflip_p)
    images = fixed_batch(n=4, size=32)
    whole = model.unaugmented(images)
    expected = whole.flip(-1) if hflip_p else whole
    views = model.make_views(images)
    # a whole-image crop of the view equals the target: input and target share their geometry
    assert torch.allclose(views[0], expected, atol=1e-5)

    # the loss reconstructs that target: a decoder that outputs it exactly has zero reconstruction loss
    model.decoder.forward = lambda fused, size: expected
    model.train()
    out = model.compute_loss(views, images)
    assert float(out["reconstruction"]) < 1e-10


# 4 -------------------------------------------------------------------------------------------------------------
def test_similarity_loss_is_fp32_under_cpu_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(64, 32, generator=g)
    z = p + 0.05 * torch.randn(64, 32, generator=g)  # cos about 0.999: the bf16 loss is mostly rounding
    p16, z16 = p.bfloat16(), z.bfloat16()
    exact = 2 - 2 * F.cosine_similarity(p16.float(), z16.float(), dim=-1).mean()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = byol_similarity_loss(p16, z16)
    assert got.dtype == torch.float32
    assert abs(float(got) - float(exact)) <= 1e-4 * float(exact)


def _layer4_gradient(trunk, images):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = trunk(images)
    grad = torch.autograd.grad(features.float().square().sum(), trunk.layer4[0].conv1.weight)[0]
    return grad


def test_trunk_gradients_under_cpu_bf16_are_exact_on_views_of_16_px():
    """At 14 px layer4 receives a 1x1 map, where oneDNN's bf16 weight gradient of the stride-2 3x3 convolution was
    garbage (1e38 or NaN, different on every call): SwAV and PCRLv2 diverged or did not repeat under DDP."""
    from medssl.nn.backbone import OneDNNSafeConv2d, ResNetTrunk

    torch.manual_seed(0)
    trunk = ResNetTrunk("resnet18", in_channels=1)
    assert isinstance(trunk.layer4[0].conv1, OneDNNSafeConv2d) and "layer4.0.conv1.weight" in trunk.state_dict()
    images = torch.randn(8, 1, 14, 14)
    grads = [_layer4_gradient(trunk, images) for _ in range(4)]
    assert all(torch.isfinite(g).all() for g in grads)
    assert all(torch.equal(grads[0], g) for g in grads[1:])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # wider maps: the ordinary (bf16) convolution
        x = torch.randn(2, 256, 4, 4)
        conv = trunk.layer4[0].conv1
        assert torch.equal(conv(x), F.conv2d(x, conv.weight, stride=2, padding=1))


def capture_outputs(module, store, key):
    module.register_forward_hook(lambda m, args, out: store.setdefault(key, []).append(out.detach()))


@pytest.mark.parametrize("name", ["byol", "coboom"])
def test_method_losses_under_bf16_autocast_equal_their_fp32_value(name):
    torch.manual_seed(0)
    model = build_method(name, tiny_protocol(), SMALL_HEADS[name])
    model.train()
    seen = {}
    capture_outputs(model.prediction_head, seen, "p")
    capture_outputs(model.projection_head_target, seen, "z")
    if name == "coboom":
        capture_outputs(model.fusion_head, seen, "fused")
    images = fixed_batch(n=8, size=32)
    views = model.make_views(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.compute_loss(views, images)
    p, z = seen["p"], seen["z"]
    assert p[0].dtype == torch.bfloat16  # the heads did run in bf16
    fp32 = lambda a, b: 2 - 2 * F.cosine_similarity(a.float(), b.float(), dim=-1).mean()
    if name == "byol":
        checks = {"loss": fp32(p[0], z[1]) + fp32(p[1], z[0])}
    else:
        fused = seen["fused"]  # pair (a, b) = (0, 1) then (1, 0): fused[0] comes from view 1's target map
        checks = {
            "l1": (fp32(p[0], z[1]) + fp32(p[1], z[0])) / 2,
            "l2": (fp32(p[0], fused[0]) + fp32(p[1], fused[1])) / 2,
        }
    for term, expected in checks.items():
        assert abs(float(out[term].detach()) - float(expected)) <= 1e-4 * abs(float(expected)), (
            term,
            float(out[term].detach()),
            float(expected),
        )


# 5 -------------------------------------------------------------------------------------------------------------
def _codebook_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        quantizer = build_method("coboom", tiny_protocol(), SMALL_HEADS["coboom"]).quantizer.train()
        g = torch.Generator().manual_seed(100 + rank)  # every process quantizes its own data
        quantizer(torch.randn(64, 512, generator=g))  # data initialisation from this process's batch
        initialised = quantizer.codebook.detach().clone()
        usage = quantizer.usage.clone()
        quantizer.usage.zero_()
        quantizer.usage[:4] += 1  # codes 4.. are dead everywhere
        quantizer(torch.randn(64, 512, generator=g))  # recent vectors differ between processes
        quantizer.usage.zero_()
        quantizer.usage[:4] += 1
        quantizer.reseed_dead()
        torch.save(
            {"initialised": initialised, "usage": usage, "reseeded": quantizer.codebook.detach().clone()},
            out_dir / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_coboom_codebook_is_identical_on_every_process(tmp_path):
    mp.start_processes(_codebook_worker, args=(2, free_port(), tmp_path), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for key in ("initialised", "reseeded", "usage"):
        assert torch.equal(ranks[0][key], ranks[1][key]), f"{key} differs between processes"
    assert int(ranks[0]["usage"].sum()) == 2 * 64  # code usage counts both processes' vectors
    assert not torch.equal(ranks[0]["initialised"], ranks[0]["reseeded"]), "the dead codes were re-seeded"


# 6 -------------------------------------------------------------------------------------------------------------
class RecordQueue(pl.Callback):
    def __init__(self):
        self.seen = {}

    def _bank(self, module):
        bank = module.criterion.memory_bank
        return bank.bank.detach().clone(), bank.bank_ptr.detach().clone()

    def on_train_start(self, trainer, module):
        self.seen["start"] = self._bank(module)

    def on_train_epoch_end(self, trainer, module):
        self.seen[trainer.current_epoch] = self._bank(module)


class StopAfterEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def test_caid_resumed_from_last_ckpt_has_the_queue_it_was_stopped_with(tmp_path, synthetic_root):
    from datasets import load_dataset
    from medssl.plan.jobs import build_plan
    from medssl.pretrain.train import run_pretraining
    from medssl.runtime.options import RunOptions

    suite = load_suite("smoke")
    suite["pretrain"]["epochs"] = 2
    suite["pretrain"].pop("monitor")
    suite["methods"], suite["method_params"] = ["caid"], {"caid": SMALL_HEADS["caid"]}
    job = build_plan(suite).pretrain_jobs[0]
    dataset = load_dataset("synthetic_cxr", synthetic_root, **suite["pretrain"]["datasets"]["cxr"]["params"])
    first = RecordQueue()
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pretraining(job, dataset, tmp_path, RunOptions(progress=False), callbacks=[first, StopAfterEpoch()])
    resumed = RecordQueue()
    run_pretraining(job, dataset, tmp_path, RunOptions(progress=False), callbacks=[resumed])
    bank, pointer = first.seen[0]  # last.ckpt was written at the end of epoch 0
    assert not torch.equal(bank, first.seen["start"][0]), "keys were enqueued in epoch 0"
    assert torch.equal(resumed.seen["start"][0], bank) and torch.equal(resumed.seen["start"][1], pointer)


# 7 -------------------------------------------------------------------------------------------------------------
def test_byol_sums_its_two_directions():
    torch.manual_seed(0)
    model = build_method("byol", tiny_protocol(), SMALL_HEADS["byol"])
    seen = {}
    capture_outputs(model.prediction_head, seen, "p")
    capture_outputs(model.projection_head_target, seen, "z")
    images = fixed_batch(n=8, size=32)
    loss = model.compute_loss(model.make_views(images), images)["loss"]
    (p1, p2), (z1, z2) = seen["p"], seen["z"]
    torch.testing.assert_close(loss.detach(), byol_similarity_loss(p1, z2) + byol_similarity_loss(p2, z1))


# 8 -------------------------------------------------------------------------------------------------------------
def test_pcrlv2_cutout_fills_the_normalised_mean():
    protocol = tiny_protocol()
    protocol.augment = {"crop_scale": [1.0, 1.0], "intensity_p": 0.0, "blur_p": 0.0}
    model = build_method("pcrlv2", protocol, {**SMALL_HEADS["pcrlv2"], "rotate_degrees": 0.0})
    images = torch.full((4, 1, 32, 32), 200, dtype=torch.uint8)
    first, second, target = model.make_views(images)[:3]
    plain = float(target[0, 0, 0, 0])  # the normalised image without cutout: one value everywhere
    for view in (first, second):
        holes = (view - plain).abs() > 1e-3
        assert holes.flatten(1).any(1).all(), "every global view has holes"
        assert torch.all(view[holes] == 0), "the official Cutout zeroes the normalised tensor (the mean), not black"


def test_pcrlv2_local_views_share_one_forward_pass():
    torch.manual_seed(0)
    model = build_method("pcrlv2", tiny_protocol(), {**SMALL_HEADS["pcrlv2"], "n_local_views": 3})
    sizes = []
    model.backbone.bn1.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    images = fixed_batch(n=4, size=32)
    model.compute_loss(model.make_views(images), images)
    assert sizes == [4, 4, 12], "two global passes, then all local views in one batch (BatchNorm sees 6B officially)"


# 9 -------------------------------------------------------------------------------------------------------------
def test_grayscale_stem_starts_as_torchvision_rgb_stem_summed():
    from medssl.nn.backbone import ResNetTrunk

    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None)
    torch.manual_seed(3)
    trunk = ResNetTrunk("resnet18", in_channels=1)
    torch.testing.assert_close(trunk.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True), rtol=0, atol=0)
    # torchvision's Kaiming normal (fan-out) has std sqrt(2 / (64 * 49)); three summed slices sqrt(3) times that
    expected = (3 * 2 / (64 * 49)) ** 0.5
    assert abs(float(trunk.conv1.weight.detach().std()) / expected - 1) < 0.05


def test_trunk_version_is_part_of_every_pretraining_hash():
    from medssl.nn.backbone import TRUNK_VERSION
    from medssl.plan.jobs import build_plan

    jobs = build_plan(load_suite("smoke")).pretrain_jobs
    assert jobs and all(job.config["trunk_version"] == TRUNK_VERSION >= 2 for job in jobs)


# 10 ------------------------------------------------------------------------------------------------------------
def test_lars_without_weight_decay_is_refused(tmp_path):
    import yaml

    suite = load_suite("quick")
    suite["pretrain"]["optimizer"] = {"name": "lars", "lr": 1.0}
    path = tmp_path / "no-decay.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(ConfigError, match="lars without weight_decay.*plain SGD"):
        load_suite(str(path))
    model = build_method("simclr", PretrainProtocol(optimizer={"name": "lars", "lr": 0.1}), SMALL_HEADS["simclr"])
    with pytest.raises(ConfigError, match="weight_decay"):
        model.configure_optimizers()
    # the default protocol is the CoBooM paper's LARS with its weight decay: the trust ratio applies
    optimizer = build_method("simclr", PretrainProtocol(), SMALL_HEADS["simclr"]).configure_optimizers()["optimizer"]
    assert optimizer.param_groups[0]["weight_decay"] == 1.5e-6 and optimizer.param_groups[1]["weight_decay"] == 0.0


# short runs: SwAV's per-step schedules as shares of training ------------------------------------------------------
def test_swav_freezes_prototypes_and_starts_its_queue_at_the_references_share_of_training():
    from medssl.plan.jobs import build_plan

    suite = load_suite("quick")
    params = next(job.config["params"] for job in build_plan(suite).pretrain_jobs if job.method == "swav")
    protocol = PretrainProtocol(image_size=48, epochs=4, steps_per_epoch=25, optimizer=suite["pretrain"]["optimizer"])
    model = build_method("swav", protocol, params)
    # official small-batch recipe: 5,005 frozen iterations of 400 x 5,005, queue from epoch 15 of 400
    assert model.frozen_prototype_steps == 1  # 100 / 400, rounded up (was a whole epoch: 25 steps)
    assert model.queue_start_step == 4  # 100 * 15 / 400 = 3.75, rounded up (was epoch 3: step 75)
    long = PretrainProtocol(image_size=48, epochs=400, steps_per_epoch=5005, optimizer=suite["pretrain"]["optimizer"])
    official = build_method("swav", long, params)
    assert official.frozen_prototype_steps == 5005 and official.queue_start_step == 15 * 5005


def test_dira_discriminator_trains_in_its_own_step_under_the_generators_precision():
    """Issue 19: the generator loss left gradients on the discriminator (dropped later, but all-reduced by DDP at
    every step) and the discriminator's own step ran in fp32 outside the run's autocast."""
    torch.manual_seed(0)
    model = build_method("dira", tiny_protocol(), SMALL_HEADS["dira"])
    model.train()
    images = fixed_batch(n=8, size=48)
    assert not any(p.requires_grad for p in model.discriminator.parameters()), "DDP must not track the discriminator"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.compute_loss(model.make_views(images), images)
    losses["loss"].backward()
    assert all(p.grad is None for p in model.discriminator.parameters()), (
        "the generator loss must not reach the discriminator"
    )
    assert model.restoration_head.weight.grad is not None
    seen = []
    hook = model.discriminator.net[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    before = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    model.on_train_batch_end(losses["loss"], images, 0)
    hook.remove()
    assert seen == [torch.bfloat16, torch.bfloat16], "the discriminator's step runs under the generator step's autocast"
    assert any(not torch.equal(before[k], v) for k, v in model.discriminator.state_dict().items())
    assert not any(p.requires_grad for p in model.discriminator.parameters())


def test_vox2vec2d_samples_at_fp32_coordinates_under_bf16_autocast():
    """Issue 19: the coordinates were cast to the feature maps' bf16 under mixed precision (8 mantissa bits: up to
    one pixel off at 224 px), so the two views' vectors came from slightly different pixels."""
    from methods.vox2vec2d import sample_levels

    side = 224
    columns = torch.arange(side, dtype=torch.float32)  # a level whose value is its column index (exact in bf16)
    level = columns.expand(1, 1, side, side).contiguous().to(torch.bfloat16)
    coords = torch.stack([torch.rand(1, 64) * 1.8 - 0.9, torch.zeros(1, 64)], dim=-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sampled = sample_levels([level], coords)
    column = ((coords[0, :, 0] + 1) * side - 1) / 2  # grid_sample's pixel position (align_corners=False)
    error = (sampled[:, 0].float() - column).abs().max()
    assert error < 0.01, f"sampled {float(error):.3f} px away from the requested coordinates"
