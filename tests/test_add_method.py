"""The recipe of docs/add-a-method.md works: a method defined in a test file runs through the smoke suite."""

import dataclasses

import torch
from lightly.loss import NegativeCosineSimilarity

from medssl.record.store import ResultStore
from methods import REGISTRY, register_method
from methods.base import MethodConfig, SSLMethod
from run_benchmark import main


@dataclasses.dataclass
class MyConfig(MethodConfig):
    dim: int = 16


class MyMethod(SSLMethod):
    Config = MyConfig

    def build(self):
        self.head = torch.nn.Linear(self.backbone.feature_dim, self.config.dim)
        self.criterion = NegativeCosineSimilarity()

    def compute_loss(self, views, images):
        z1, z2 = (self.head(self.backbone(v)) for v in views)
        return {"loss": self.criterion(z1, z2.detach())}


def test_registered_method_runs_through_smoke_suite(tmp_path, capsys):
    register_method("mymethod", MyMethod, label="Mine", replace=True)
    try:
        (tmp_path / "data").mkdir()
        args = [
            "--suite",
            "smoke",
            "--methods",
            "mymethod",
            "--seeds",
            "0",
            "--fractions",
            "100",
            "--data-root",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "out"),
            "--reports",
            str(tmp_path / "rep"),
            "--no-progress",
        ]
        assert main(args) == 0
        records = ResultStore(tmp_path / "out" / "smoke").records()
        assert {(r["method"], r["protocol"]) for r in records} == {("mymethod", "linear"), ("mymethod", "finetune")}
        assert "| Mine |" in (tmp_path / "rep" / "smoke" / "table1.md").read_text()
    finally:
        REGISTRY.pop("mymethod", None)
