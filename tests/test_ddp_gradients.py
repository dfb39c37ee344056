"""Two CPU processes (gloo) on halves of a batch give the same gradients as one process on the whole batch, for every
registered method (under its ``test_params``). It matters for the losses that gather across processes (SimCLR's
NT-Xent, VICReg's variance/covariance, SwAV's Sinkhorn, also with SwAV's queue split over the processes, MLVICX's
VICReg terms, vox2vec2d's pixel-level NT-Xent); MoCo-based DiRA/CAiD share one queue of keys and one
discriminator. Losses that are sums of per-image terms (BYOL, PCRLv2, CoBooM's regression and reconstruction) are
exact under DDP's gradient average, unless a method standardises or normalises over its process's batch: a new
method's trap this test is there to catch (lightly's BarlowTwinsLoss standardises per process).

Each process computes its loss on its half, back-propagates through lightly's gather, and averages parameter
gradients over processes as DDP does. BatchNorm layers run on fixed statistics (eval mode) so that only the loss's
cross-process terms are compared (per-process BatchNorm statistics are a separate matter: SyncBatchNorm).
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.distributed import free_port
from tests.test_methods import SMALL_HEADS, SSL_METHODS, fixed_batch, tiny_protocol

WORLD = 2


def _model(name, **params):
    from methods import build_method

    torch.manual_seed(0)
    model = build_method(name, tiny_protocol(), {**SMALL_HEADS[name], **params})
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


def _gradients(model, views):
    model.zero_grad(set_to_none=True)
    loss = model.compute_loss(views, None)["loss"]
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}, loss.detach()


def _fill_swav_queue(model, rank, world):
    """A full queue of fixed embeddings: one process holds all of it, process ``rank`` of ``world`` its share."""
    torch.manual_seed(2)
    full = torch.nn.functional.normalize(
        torch.randn(model.n_views, model.config.queue_length, model.config.output_dim), dim=-1
    )
    model.setup("fit")
    model.queue.copy_(full.chunk(world, dim=1)[rank])
    model.queue_filled.fill_(model.queue.shape[1])


def _init_group(rank, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)


def _worker(rank, name, views, port, out, params, prepare, state):
    _init_group(rank, port)
    try:
        model = _model(name, **params)
        if state is not None:
            model.load_state_dict(state)
        if prepare is not None:
            prepare(model, rank, WORLD)
        local = [v.chunk(WORLD)[rank] for v in views]
        grads, loss = _gradients(model, local)
        for g in grads.values():
            dist.all_reduce(g)
            g /= WORLD
        dist.all_reduce(loss)
        if rank == 0:
            torch.save({"grads": grads, "loss": loss / WORLD}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "name, params, prepare",
    [(name, {}, None) for name in SSL_METHODS] + [("swav", {"queue_length": 12}, _fill_swav_queue)],
    ids=SSL_METHODS + ["swav-queue"],
)
def test_two_processes_match_one_process(name, params, prepare, tmp_path):
    model = _model(name, **params)
    if prepare is not None:
        prepare(model, 0, 1)
    torch.manual_seed(1)
    views = [v.detach() for v in model.make_views(fixed_batch(n=8, size=48))]
    state = None
    if prepare is None:
        # state a first step sets up from its data (CoBooM's codebook, MoCo queues) is set up once, on the whole
        # batch, and shared, so that the processes compare the gradient of the same model
        with torch.no_grad():
            model.compute_loss(views, None)
        state = {k: v.clone() for k, v in model.state_dict().items()}
    expected, expected_loss = _gradients(model, views)
    out = tmp_path / "grads.pt"
    mp.start_processes(
        _worker, args=(name, views, free_port(), out, params, prepare, state), nprocs=WORLD, start_method="spawn"
    )
    got = torch.load(out)
    # without the gather each process would score its half against fewer negatives / batch statistics: other loss
    assert torch.allclose(got["loss"], expected_loss, rtol=1e-5, atol=1e-6), (float(got["loss"]), float(expected_loss))
    assert set(got["grads"]) == set(expected)
    # Relative to the largest gradient of the model: a parameter whose true gradient is zero (VICReg's last bias:
    # the invariance term cancels it and the variance/covariance terms are centred) only shows rounding noise.
    scale = max(float(g.abs().max()) for g in expected.values())
    worst = max(float((got["grads"][n] - g).abs().max()) for n, g in expected.items()) / scale
    assert worst < 1e-5, f"largest gradient difference {worst:.2e} of the largest gradient"


def _moco_worker(rank, views, port, out_dir):
    _init_group(rank, port)
    try:
        model = _model("dira")
        model.compute_loss([v.chunk(WORLD)[rank] for v in views], None)  # enqueues the keys (shuffle-BN path)
        model.discriminator_step(*model._pending_adversary)
        torch.save(
            {"queue": model.criterion.memory_bank.bank.clone(), "discriminator": model.discriminator.state_dict()},
            out_dir / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_moco_queue_and_discriminator_are_shared_across_processes(tmp_path):
    """DiRA (and CAiD, its subclass): the keys of both processes enter one queue in global-batch order, the same
    queue as one process's; the discriminator, stepped outside DDP's backward, stays one model."""
    model = _model("dira")
    torch.manual_seed(1)
    views = [v.detach() for v in model.make_views(fixed_batch(n=8, size=48))]
    model.compute_loss(views, None)
    model.discriminator_step(*model._pending_adversary)
    mp.start_processes(_moco_worker, args=(views, free_port(), tmp_path), nprocs=WORLD, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for got in ranks:
        assert torch.allclose(got["queue"], model.criterion.memory_bank.bank, atol=1e-5), (
            "queue differs from one process's"
        )
    # Equal across processes, bit for bit (each process saw different images, so without the all-reduce they
    # differ). Not compared with one process: Adam's first step is about lr * sign(gradient), and the biases
    # before InstanceNorm have gradients of pure rounding noise, whose sign differs between the two computations.
    for key, value in ranks[0]["discriminator"].items():
        assert torch.equal(value, ranks[1]["discriminator"][key]), f"discriminators diverged at {key}"
    assert not torch.equal(ranks[0]["discriminator"]["net.0.weight"], _model("dira").discriminator.net[0].weight), (
        "the discriminator did not step"
    )
