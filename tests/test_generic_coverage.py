"""A new method is in every generic test by construction: a throwaway momentum method, defined in a file outside
the repository and registered through ``MEDSSL_METHODS`` (one entry, as a registry line would), is collected by the
method, DDP, gradient-equality, resume, momentum, host-sync and exported-BatchNorm tests without editing a test
file; the quick ones are run on it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from methods import REGISTRY, register_from_environment

ROOT = Path(__file__).resolve().parent.parent

THROWAWAY = '''
import dataclasses

from torch import nn

from methods.base import MethodConfig, SSLMethod, byol_similarity_loss


@dataclasses.dataclass
class ThrowawayConfig(MethodConfig):
    dim: int = 256
    ema_base: float = 0.99


class Throwaway(SSLMethod):
    """A BYOL-like momentum method that only a test registers."""

    Config = ThrowawayConfig
    test_params = {"dim": 16}

    def build(self):
        self.projection_head = nn.Sequential(nn.Linear(self.backbone.feature_dim, self.config.dim), nn.BatchNorm1d(self.config.dim))
        self.prediction_head = nn.Linear(self.config.dim, self.config.dim)
        self.make_ema_targets("backbone", "projection_head")

    def compute_loss(self, views, images):
        p1, p2 = (self.prediction_head(self.projection_head(self.backbone(v))) for v in views)
        z1, z2 = (self.projection_head_target(self.backbone_target(v)).detach() for v in views)
        return {"loss": byol_similarity_loss(p1, z2) + byol_similarity_loss(p2, z1)}
'''

# each generic test, by the name pytest gives it, and whether it is quick enough to run here
GENERIC = {
    "tests/test_methods.py::test_loss_finite_and_decreases_on_fixed_batch": True,
    "tests/test_methods.py::test_trains_at_a_side_that_is_not_a_multiple_of_32": True,
    "tests/test_methods.py::test_views_and_encoder_shapes": True,
    "tests/test_host_syncs.py::test_training_step_has_no_host_sync": True,
    "tests/test_momentum_targets.py::test_momentum_targets_move_towards_the_online_network_and_lag_it": True,
    "tests/test_momentum_targets.py::test_momentum_targets_are_not_optimised": True,
    "tests/test_ddp_gradients.py::test_two_processes_match_one_process": True,
    "tests/test_resume_every_method.py::test_pretraining_killed_mid_epoch_resumes_to_the_uninterrupted_weights": True,
    "tests/test_exported_batchnorm.py::test_exported_encoder_batchnorm_matches_its_inputs": False,
}


def _environment(folder: Path) -> dict:
    (folder / "throwaway_method.py").write_text(THROWAWAY)
    path = os.pathsep.join([str(folder), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "MEDSSL_METHODS": "throwaway=throwaway_method:Throwaway"}


def test_a_registered_method_is_collected_and_passes_the_generic_tests(tmp_path):
    env = _environment(tmp_path)
    files = sorted({name.split("::")[0] for name in GENERIC})
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *files],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stdout[-2000:] + listed.stderr[-2000:]
    for test in GENERIC:
        assert f"{test}[throwaway]" in listed.stdout, f"{test} does not cover a new method"
    # the torchrun roster of the DDP pretraining test takes every method the ddp_spawn test does not
    roster = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json; from tests.test_ddp_pretraining import OTHER_METHODS as m; print(json.dumps(m))",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "throwaway" in json.loads(roster.stdout), roster.stderr[-2000:]
    quick = [f"{test}[throwaway]" for test, runs in GENERIC.items() if runs]
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *quick],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0 and f"{len(quick)} passed" in ran.stdout, ran.stdout[-3000:]


def test_a_malformed_environment_entry_is_a_clear_error():
    with pytest.raises(ValueError, match="write name=module:Class"):
        register_from_environment("mine=my_methods.Mine")
    assert register_from_environment("mine = my_methods:Mine") == ["mine"]
    REGISTRY.pop("mine")
