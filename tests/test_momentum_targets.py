"""Momentum (EMA) targets of every registered method that has one (``SSLMethod.make_ema_targets``): they lag the
online network, move towards it after each step, and never reach the optimiser. A method is found by building it
under its ``test_params``, so a new momentum method is covered without editing this file."""

import copy

import pytest
import torch

from methods import build_method
from tests.test_methods import SMALL_HEADS, SSL_METHODS, fixed_batch, tiny_protocol, train_steps


def _build(name, lr=1e-3):
    torch.manual_seed(0)
    return build_method(name, tiny_protocol(lr=lr), SMALL_HEADS[name])


MOMENTUM_METHODS = [name for name in SSL_METHODS if _build(name).momentum_pairs()]


def test_the_momentum_methods_are_found():
    assert {"byol", "coboom", "dira", "caid"} <= set(MOMENTUM_METHODS)


@pytest.mark.parametrize("name", MOMENTUM_METHODS)
def test_momentum_targets_move_towards_the_online_network_and_lag_it(name):
    model = _build(name, lr=1e-2)
    before = [copy.deepcopy(target.state_dict()) for _, target in model.momentum_pairs()]
    train_steps(model, fixed_batch(), steps=2)
    for (online, target), old in zip(model.momentum_pairs(), before):
        after = target.state_dict()
        moved = [k for k in after if after[k].dtype.is_floating_point and not torch.equal(after[k], old[k])]
        assert moved, f"{name}: the target of {type(online).__name__} did not change"
        weights = [k for k, v in online.state_dict().items() if k.endswith("weight") and v.dtype.is_floating_point]
        assert any(not torch.equal(after[k], online.state_dict()[k]) for k in weights), "the target copies"
        assert all(not p.requires_grad for p in target.parameters())


@pytest.mark.parametrize("name", MOMENTUM_METHODS)
def test_momentum_targets_are_not_optimised(name):
    model = _build(name)
    groups = model.configure_optimizers()["optimizer"].param_groups
    optimised = {id(p) for group in groups for p in group["params"]}
    for online, target in model.momentum_pairs():
        assert not optimised & {id(p) for p in target.parameters()}
        assert {id(p) for p in online.parameters()} <= optimised


def test_a_momentum_method_without_ema_base_is_refused_when_built():
    """A momentum field named otherwise (here ``momentum``) silently ran the default 0.996 -> 1 schedule."""
    import dataclasses

    from torch import nn

    from methods.base import MethodConfig, SSLMethod

    @dataclasses.dataclass
    class MisnamedConfig(MethodConfig):
        momentum: float = 0.99

    class Misnamed(SSLMethod):
        Config = MisnamedConfig

        def build(self):
            self.projection_head = nn.Linear(self.backbone.feature_dim, 8)
            self.make_ema_targets("projection_head")

    with pytest.raises(TypeError, match="no ema_base field"):
        Misnamed(MisnamedConfig(), tiny_protocol())
