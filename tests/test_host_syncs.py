"""A training step never makes the host wait for the device (issue 19): no tensor read back as a Python number
(LARS's trust-ratio test, the blur's kernel size, SwAV's queue fill, MoCo's queue pointer, CoBooM's codebook flag)
and no operation with a data-dependent output size (CoBooM's codebook usage). Counted on the CPU with
medssl.runtime.host_sync.HostSyncCounter, which sees the operations that stop a GPU run; the replacements compute what
lightly's and the old code computed."""

import copy

import pytest
import torch
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.utils.lars import LARS

from benchmarks.throughput import lightning_order_step
from medssl.nn.augment import gaussian_blur
from medssl.nn.optim import SyncFreeLARS
from medssl.runtime.host_sync import LIGHTLY_CONSTANT_MASKS, HostSyncCounter
from methods import build_method
from methods.base import PretrainProtocol
from tests.test_methods import SMALL_HEADS, SSL_METHODS, fixed_batch


def _protocol():
    return PretrainProtocol(
        image_size=32,
        epochs=1,
        steps_per_epoch=8,
        optimizer={"name": "lars", "lr": 0.1, "weight_decay": 1e-4},
        augment={"crop_scale": [0.5, 1.0], "blur_p": 0.5, "blur_sigma": [0.1, 2.0]},
    )


@pytest.mark.parametrize("name", SSL_METHODS)
def test_training_step_has_no_host_sync(name):
    """Before issue 19: SimCLR 48, MLVICX 98, PCRLv2 106 syncing operations per step (LARS 2 per weight-decayed
    tensor, the blur 1 per view, SwAV/MoCo queues and CoBooM 1-4 each)."""
    params = dict(SMALL_HEADS[name])
    if name == "swav":
        params.update(queue_length=8, queue_start_share=0.0)  # the queue in use: its fill count is checked every step
    torch.manual_seed(0)
    model = build_method(name, _protocol(), params)
    model.setup("fit")
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    images = fixed_batch(8)
    for step in range(3):  # the first steps may read a flag once (codebook initialised, queue fill after building)
        lightning_order_step(model, optimizer, scheduler, images, "cpu", "32-true", step)
    with HostSyncCounter() as counter:
        lightning_order_step(model, optimizer, scheduler, images, "cpu", "32-true", 3)
    ours = counter.outside(LIGHTLY_CONSTANT_MASKS)
    assert not ours, f"{name}: host syncs in the training step: {ours}"
    assert all(op == "boolean index" for op, _ in counter.counts)


def test_sync_free_lars_updates_exactly_as_lightly_lars():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.BatchNorm1d(20), torch.nn.Linear(20, 3))
    with torch.no_grad():
        net[2].bias.zero_()  # a zero weight norm: no trust ratio for this tensor

    def groups(m):
        return [
            {"params": [m[0].weight, m[2].weight, m[2].bias], "weight_decay": 1e-4},
            {"params": [m[0].bias, m[1].weight, m[1].bias], "weight_decay": 0.0},
        ]

    ours, theirs = copy.deepcopy(net), copy.deepcopy(net)
    optimizers = {
        id(ours): SyncFreeLARS(groups(ours), lr=0.1, momentum=0.9),
        id(theirs): LARS(groups(theirs), lr=0.1, momentum=0.9),
    }
    for _ in range(5):
        x = torch.randn(16, 10)
        for model in (ours, theirs):
            optimizers[id(model)].zero_grad()
            model(x).pow(2).mean().backward()
            optimizers[id(model)].step()
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))


def test_blur_sized_from_the_configured_range_is_the_batch_sized_blur():
    torch.manual_seed(0)
    for _ in range(10):
        x = torch.rand(3, 1, 64, 64)
        sigma = torch.rand(3) * 0.6 + 0.1
        sigma[0] = 0.0
        with HostSyncCounter() as counter:
            fixed = gaussian_blur(x, sigma, max_sigma=2.0)
        assert counter.total == 0
        torch.testing.assert_close(fixed, gaussian_blur(x, sigma), rtol=0, atol=1e-6)


def test_moco_queue_with_a_host_pointer_fills_as_lightly_queue():
    from methods.momentum import HostPointerQueue

    torch.manual_seed(0)
    lightly_queue = MemoryBankModule((10, 4))
    ours = HostPointerQueue.replacing(copy.deepcopy(lightly_queue))
    for n in (3, 4, 2, 5, 3, 6):  # wraps around twice, once exactly at the end
        keys = torch.randn(n, 4)
        lightly_queue(keys, update=True)
        ours(keys, update=True)
        assert torch.equal(ours.bank, lightly_queue.bank) and torch.equal(ours.bank_ptr, lightly_queue.bank_ptr)
    saved = ours.state_dict()
    assert set(saved) == {"bank", "bank_ptr"}, "the queue and its position are checkpointed"
    restored = HostPointerQueue.replacing(MemoryBankModule((10, 4)))
    restored.load_state_dict(saved)
    keys = torch.randn(3, 4)
    restored(keys, update=True)
    lightly_queue(keys, update=True)
    assert torch.equal(restored.bank, lightly_queue.bank), "a loaded queue continues at the loaded position"


def test_swav_queue_fill_counted_on_the_host_follows_a_loaded_state():
    params = {**SMALL_HEADS["swav"], "queue_length": 8}
    model = build_method("swav", _protocol(), params)
    model.setup("fit")
    model.enqueue(torch.randn(2, 8, params["output_dim"]))
    assert model.queue_in_use()
    fresh = build_method("swav", _protocol(), params)
    fresh.setup("fit")
    assert not fresh.queue_in_use()
    fresh.load_state_dict(model.state_dict())
    assert fresh.queue_in_use(), "a resumed run's full queue is used at once"


def test_coboom_usage_counts_are_bincounts():
    model = build_method("coboom", _protocol(), SMALL_HEADS["coboom"])
    quantizer = next(m for m in model.modules() if hasattr(m, "usage"))
    quantizer.train()
    vectors = torch.randn(64, quantizer.codebook.shape[1])
    _, _, _, indices = quantizer(vectors)
    assert torch.equal(quantizer.usage, torch.bincount(indices, minlength=len(quantizer.codebook)))
    reloaded = build_method("coboom", _protocol(), SMALL_HEADS["coboom"])
    reloaded_quantizer = next(m for m in reloaded.modules() if hasattr(m, "usage"))
    reloaded_quantizer.load_state_dict(quantizer.state_dict())
    before = reloaded_quantizer.codebook.detach().clone()
    reloaded_quantizer.train()
    reloaded_quantizer(vectors)
    assert torch.equal(reloaded_quantizer.codebook, before), "a loaded initialised codebook is not initialised again"


@pytest.mark.parametrize("name", ["swav"])
def test_compile_covers_the_whole_loss_once_and_survives_pickling(name):
    """--compile once wrapped the trunk's forward only (heads, EMA targets, decoders and losses ran eagerly), was lost
    when ddp_spawn pickled the module, and SwAV's two view sizes recompiled it. A recording backend sees what
    torch.compile captures: the projection head is in the graphs, a second step adds no graph, the losses are
    those of the eager step, and the module pickles with its state unchanged."""
    import pickle

    graphs = []

    def recording(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    params = dict(SMALL_HEADS[name])
    torch.manual_seed(0)
    eager = build_method(name, _protocol(), params)
    torch.manual_seed(0)
    compiled = build_method(name, _protocol(), params)
    compiled.compile_backend = recording
    spawned = build_method(name, _protocol(), params)
    spawned.compile_backend = "eager"
    spawned.setup("fit")
    restored = pickle.loads(pickle.dumps(spawned))  # what ddp_spawn does to the module
    assert restored._compiled_loss is None and list(restored.state_dict()) == list(eager.state_dict())
    restored.setup("fit")
    assert restored._compiled_loss is not None, "each process compiles again in setup"
    losses, graphs_after = {}, []
    for label, model in (("eager", eager), ("compiled", compiled)):
        torch._dynamo.reset()
        model.setup("fit")
        config = model.configure_optimizers()
        torch.manual_seed(1)
        losses[label] = []
        for step in range(2):
            losses[label].append(
                lightning_order_step(
                    model,
                    config["optimizer"],
                    config["lr_scheduler"]["scheduler"],
                    fixed_batch(8),
                    "cpu",
                    "32-true",
                    step,
                )
            )
            graphs_after.append(len(graphs))
    assert graphs_after[2] > 0 and graphs_after[3] == graphs_after[2], (
        f"graphs captured after each compiled step: {graphs_after[2:]}"
    )
    captured = " ".join(str(g.code) for g in graphs)
    assert "projection_head" in captured, "the heads are compiled, not only the trunk"
    torch.testing.assert_close(torch.stack(losses["compiled"]), torch.stack(losses["eager"]), rtol=1e-5, atol=1e-6)
