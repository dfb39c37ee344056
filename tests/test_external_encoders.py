"""Issue 20: encoders brought from files as table rows, export to torchvision, kNN, per-command CLI, --set, deeper
ResNets, Lightning loggers."""

import argparse
import json
import os
import pickle

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torchvision
from scipy import stats as scipy_stats
from torch import nn

from medssl.evaluate.external import find_trunk, load_external, read_weights, resolve_spec
from medssl.nn.backbone import ResNetTrunk
from medssl.suite.protocol import ConfigError
from run_benchmark import main

# the smoke suite with a kNN protocol next to linear probing and fine-tuning
KNN = ["--set", "tasks.0.protocols=[linear, finetune, knn]", "--set", "evaluation.knn={k: 5, temperature: 0.1}"]


def torchvision_file(path, seed=0):
    torch.manual_seed(seed)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


class LightlyStyleModel(pl.LightningModule):
    """lightly's examples: the trunk as nn.Sequential(*list(resnet.children())[:-1]), a head, hyper-parameters that
    pickle as an argparse.Namespace."""

    def __init__(self, args):
        super().__init__()
        self.save_hyperparameters({"args": args})
        self.backbone = nn.Sequential(*list(torchvision.models.resnet18().children())[:-1])
        self.projection_head = nn.Linear(512, 16)

    def training_step(self, batch, batch_idx):
        return self.projection_head(self.backbone(batch[0]).flatten(1)).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def lightning_file(path):
    torch.manual_seed(1)
    model = LightlyStyleModel(argparse.Namespace(lr=1e-3, arch="resnet18"))
    trainer = pl.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(
        model, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(4, 3, 32, 32)), batch_size=4)
    )
    trainer.save_checkpoint(path)
    return path, model


def records(out):
    return [json.loads(line) for line in (out / "smoke" / "records.jsonl").read_text().splitlines()]


def test_lightning_checkpoint_trunk_is_found_and_loaded_as_trained(tmp_path):
    path, model = lightning_file(tmp_path / "lightly.ckpt")
    with pytest.raises(
        pickle.UnpicklingError
    ):  # the reason for the inert stand-ins: the plain weights-only reader refuses it
        torch.load(path, weights_only=True)
    arch, prefix, trunk = find_trunk(read_weights(path), path)
    assert (arch, prefix) == ("resnet18", "backbone.")
    encoder, meta = load_external("lit", resolve_spec("lit", {"path": str(path)}), in_channels=3)
    x = torch.rand(2, 3, 64, 64)
    model.eval(), encoder.eval()
    assert torch.allclose(encoder(x), model.backbone(x).flatten(1), atol=1e-6)
    assert meta["external"]["normalisation"] == "ImageNet (default)"


def test_three_channel_encoder_reads_grayscale_replicated_and_normalised_per_channel(tmp_path):
    """The default for ImageNet weights on a 1-channel suite (issue 31): the features are torchvision's model's on the
    grey image replicated to three channels, each normalised with ImageNet's own mean and sd (exact); the old
    default (one channel, averaged statistics) was up to 0.2 sd off."""
    from medssl.evaluate.classify import extract_features

    path = torchvision_file(tmp_path / "tv.pth")
    net = torchvision.models.resnet18()
    net.load_state_dict(torch.load(path))
    net.fc = nn.Identity()
    encoder, meta = load_external("tv", resolve_spec("tv", {"path": str(path)}), in_channels=1)
    assert (
        meta["in_channels"] == 3 and meta["mean"] == [0.485, 0.456, 0.406] and meta["external"]["stem"] == "replicate"
    )
    gray = np.random.default_rng(0).integers(0, 256, size=(3, 1, 48, 48), dtype=np.uint8)
    ours = extract_features(encoder, gray, 48, meta["mean"], meta["std"])
    rgb = torch.from_numpy(gray).float().div(255).repeat(1, 3, 1, 1)
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406])[None, :, None, None],
        torch.tensor([0.229, 0.224, 0.225])[None, :, None, None],
    )
    with torch.no_grad():
        reference = net.eval()((rgb - mean) / std).numpy()
    assert np.allclose(ours, reference, atol=1e-4)
    summed, _ = load_external("tv", resolve_spec("tv", {"path": str(path), "stem": "sum"}), in_channels=1)
    assert summed.conv1.weight.shape[1] == 1


def test_three_channel_stem_on_grayscale_is_summed(tmp_path):
    path = torchvision_file(tmp_path / "tv.pth")
    net = torchvision.models.resnet18()
    net.load_state_dict(torch.load(path))
    encoder, meta = load_external(
        "tv", resolve_spec("tv", {"path": str(path), "mean": [0.5], "std": [0.25], "stem": "sum"}), in_channels=1
    )
    gray = torch.rand(2, 1, 64, 64)
    net.fc = nn.Identity()
    net.eval(), encoder.eval()
    assert torch.allclose(encoder(gray), net(gray.repeat(1, 3, 1, 1)), atol=1e-5)
    assert meta["mean"] == [0.5] and meta["std"] == [0.25]


def test_external_rows_in_the_smoke_tables_keyed_by_sha256(tmp_path, synthetic_root, capsys):
    tv = torchvision_file(tmp_path / "tv.pth")
    lit, _ = lightning_file(tmp_path / "lightly.ckpt")
    out = tmp_path / "out"
    args = [
        "--suite",
        "smoke",
        "--methods",
        "supervised",
        "--encoder",
        f"tv={tv}",
        "--encoder",
        f"lit={lit},prefix=backbone.",
        *KNN,
        "--data-root",
        str(synthetic_root),
        "--out",
        str(out),
        "--no-progress",
        "--logger",
        "tensorboard",
    ]
    assert main(args) == 0
    first = records(out)
    per_row = {m: sum(r["method"] == m for r in first) for m in ("supervised", "tv", "lit")}
    assert per_row == {"supervised": 12, "tv": 12, "lit": 12}  # 3 protocols x 2 fractions x 2 seeds
    external = {r["method"]: r["external"] for r in first if r.get("external")}
    assert (
        external["tv"]["sha256"] == __import__("hashlib").sha256(tv.read_bytes()).hexdigest()
        and external["lit"]["prefix_found"] == "backbone."
    )
    report = next(out.glob("reports/smoke--methods-supervised--set-*"))
    for table in ("table1.md", "table2.md", "table3.md"):
        text = (report / table).read_text()
        assert "| tv |" in text and "| lit |" in text
        assert (
            "encoders brought from files (tv, lit): over their evaluation seeds" in text.splitlines()[0]
        )  # the caption says what their sd is over
    assert "Table 3. Weighted kNN" in (report / "table3.md").read_text()
    # tensorboard logs of fine-tuning next to the (external) pretraining's folder
    assert list((out / "checkpoints").glob("tv-cxr-*/finetune/*/logs/version_0/events.out.tfevents.*"))
    # unchanged files: nothing is evaluated again
    capsys.readouterr()
    assert main(args) == 0
    assert "done: 0 evaluations run, 36 reused" in capsys.readouterr().out
    # a changed file is evaluated again, and only it
    torchvision_file(tv, seed=5)
    assert main(args) == 0
    assert "done: 12 evaluations run, 24 reused" in capsys.readouterr().out
    # the suite's report rebuilds the rows from the records alone (the files may be gone), tv from its latest file
    tv.unlink(), lit.unlink()
    assert main(["report", "--suite", "smoke", "--out", str(out)]) == 0
    table = (out / "reports" / "smoke" / "table1.md").read_text()
    assert "| tv |" in table and "| lit |" in table
    latest_tv = [r for r in records(out) if r["method"] == "tv"][-1]
    cell = next(line for line in table.splitlines() if line.startswith("| tv |"))
    assert (
        cell.split("|")[3]
        .strip()
        .startswith(
            f"{100 * np.mean([r['value'] for r in records(out)[-12:] if r['protocol'] == 'linear' and r['fraction'] == 100]):.1f}"
        )
    )
    assert latest_tv["external"]["sha256"] != external["tv"]["sha256"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a checkpoint at all", "not a state dict or checkpoint that torch.load or safetensors can read"),
        ("missing", "missing layer4.1.bn2.weight"),
        ("no-trunk", "no ResNet trunk found"),
    ],
)
def test_bad_encoder_files_are_refused_with_their_name(tmp_path, synthetic_root, capsys, content, message):
    path = tmp_path / "enc.pth"
    if content == "missing":
        state = torchvision.models.resnet18().state_dict()
        del state["layer4.1.bn2.weight"]
        torch.save(state, path)
    elif content == "no-trunk":
        torch.save({"head.weight": torch.zeros(2, 2)}, path)
    else:
        path.write_bytes(content)
    out = tmp_path / "out"
    assert (
        main(
            [
                "--suite",
                "smoke",
                "--methods",
                "supervised",
                "--encoder",
                f"mine={path}",
                "--data-root",
                str(synthetic_root),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and message in err and err.count("\n") == 1
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").iterdir())  # refused before any work


def test_export_loads_into_torchvision_and_back_as_the_same_encoder(tmp_path, synthetic_root, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "out"
    common = ["--suite", "smoke", "--data-root", str(synthetic_root), "--out", str(out), "--no-progress"]
    assert main(["export", *common, "--method", "simclr"]) == 0
    exported = sorted((out / "exports" / "smoke").glob("*.safetensors"))
    assert [p.name.endswith("-3ch.safetensors") for p in exported] == [True, False]
    three, one = (load_file(str(p)) for p in exported)
    result = torchvision.models.resnet18().load_state_dict(three, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    trunk = ResNetTrunk("resnet18", in_channels=1)
    trunk.load_state_dict(one)  # strict: the as-trained file is the trunk, key for key
    sidecar = json.loads(exported[1].with_suffix(".json").read_text())
    assert (
        sidecar["method"] == "simclr"
        and sidecar["channels"] == 1
        and sidecar["image_size"] == 32
        and len(sidecar["mean"]) == 1
    )
    # evaluated as an external encoder, the export scores exactly what the method's own row scores
    assert (
        main(
            [
                "--methods",
                "simclr",
                "--encoder",
                f"exported={exported[1]}",
                "--fractions",
                "100",
                "--seeds",
                "0",
                "--set",
                "tasks.0.protocols=[linear]",
                *common,
            ]
        )
        == 0
    )
    values = {r["method"]: r["value"] for r in records(out)}
    assert values["exported"] == values["simclr"]


def test_a_fixed_encoder_is_tested_over_its_own_evaluation_seeds():
    """An encoder brought from a file has fixed weights: its replicates are its evaluation seeds, and their spread is
    part of the test's standard error (issue 30: it was copied under each pretraining run and cancelled out)."""
    from medssl.plan.jobs import FIXED_RUN
    from medssl.report.compare import CellRuns, compare_runs

    trained = CellRuns(values={(s, e): 0.70 + 0.02 * s + 0.01 * e for s in (0, 1, 2) for e in (0, 1)})
    fixed = CellRuns(values={(FIXED_RUN, e): 0.65 + 0.03 * e for e in (0, 1)})
    assert fixed.fixed and not trained.fixed and fixed.n_pretraining == 0
    assert fixed.replicates(True) == [0.65, 0.68]  # its sd is over evaluation seeds, whatever the suite replicates
    result = compare_runs(trained, fixed)
    runs, seeds = [0.705, 0.725, 0.745], [0.65, 0.68]
    expected = scipy_stats.ttest_ind(runs, seeds, equal_var=False)
    assert (result["n_method"], result["n_versus"], result["unit_versus"]) == (3, 2, "evaluation seeds")
    assert result["difference"] == pytest.approx(100 * (np.mean(runs) - np.mean(seeds)))
    assert result["p"] == pytest.approx(expected.pvalue) and result["df"] == pytest.approx(expected.df)
    assert compare_runs(fixed, trained)["difference"] == pytest.approx(-result["difference"])
    other = CellRuns(values={(FIXED_RUN, e): 0.60 + 0.01 * e for e in (0, 1)})
    both = compare_runs(fixed, other)  # two fixed encoders: over evaluation seeds (and test images) only
    assert both["unit_method"] == both["unit_versus"] == "evaluation seeds" and np.isfinite(both["p"])


def test_a_swapped_file_with_the_old_size_and_time_is_hashed_by_what_is_loaded(tmp_path):
    """cp + touch -r (rsync -t) kept (path, size, mtime): the cached SHA-256 of the first file keyed the second
    file's results (issue 32)."""
    import shutil

    first, second = torchvision_file(tmp_path / "a.pth"), tmp_path / "b.pth"
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18().state_dict(), second)
    assert first.stat().st_size == second.stat().st_size
    spec = resolve_spec("tv", {"path": str(first)})
    stat = first.stat()
    shutil.copyfile(second, first)
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ConfigError, match="has changed since this run was planned"):
        load_external("tv", spec, in_channels=3)
    assert resolve_spec("tv", {"path": str(first)})["sha256"] != spec["sha256"], "a new plan sees the new file"


def test_encoder_file_messages_name_the_folder_and_the_blocked_global(tmp_path):
    class Shell:
        def __reduce__(self):
            return (os.system, ("true",))

    (tmp_path / "weights").mkdir()
    with pytest.raises(ConfigError, match="is a folder; give the weights file in it"):
        resolve_spec("w", {"path": str(tmp_path / "weights")})
    crafted = tmp_path / "crafted.pth"
    torch.save({"conv1.weight": torch.zeros(1), "hook": Shell()}, crafted)
    with pytest.raises(ConfigError, match=r"names (posix|nt)\.system, which a weights-only load refuses"):
        read_weights(crafted)


def test_exports_are_byte_identical_and_carry_their_normalisation(tmp_path):
    """The same trunk exported three times had three SHA-256s (the safetensors header's order varied), and an
    export killed before its sidecar was read with ImageNet's normalisation (issue 32)."""
    from medssl.pretrain.export import write_trunk

    torch.manual_seed(0)
    state = ResNetTrunk("resnet18", in_channels=1).state_dict()
    description = {
        "method": "simclr",
        "suite": "smoke",
        "pretraining_key": "k",
        "pretraining_hash": "h",
        "pretraining_seed": 0,
        "corpus": "cxr",
        "backbone": "resnet18",
        "image_size": 32,
        "key_names": "torchvision",
        "encoder_sha256": "0" * 64,
    }
    files = [write_trunk(state, [0.41], [0.27], tmp_path / f"e{i}.safetensors", description)[0] for i in range(3)]
    assert len({f.read_bytes() for f in files}) == 1
    files[0].with_suffix(".json").unlink()
    spec = resolve_spec("e0", {"path": str(files[0])})
    assert spec["mean"] == [0.41] and spec["std"] == [0.27] and spec["normalisation"] == "safetensors header"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda sd: sd["layer1.0.conv1.weight"].fill_(float("nan")), "non-finite values in layer1.0.conv1.weight"),
        (
            lambda sd: sd.__setitem__("conv1.weight", sd["conv1.weight"].to(torch.int64)),
            r"not floating-point: conv1.weight \(torch.int64\)",
        ),
        (
            lambda sd: sd.__setitem__("bn1.weight", sd["bn1.weight"] > 0),
            r"not floating-point: bn1.weight \(torch.bool\)",
        ),
    ],
)
def test_unusable_weights_are_refused_naming_the_keys(tmp_path, change, message):
    """NaN, integer or bool weights loaded (cast) and gave rows of noise (issue 32)."""
    path = torchvision_file(tmp_path / "tv.pth")
    state = torch.load(path)
    change(state)
    torch.save(state, path)
    with pytest.raises(ConfigError, match=message):
        load_external("tv", resolve_spec("tv", {"path": str(path)}), in_channels=3)


@pytest.mark.parametrize("options", [{"mean": [float("nan")]}, {"std": [float("inf")]}, {"std": [0.0]}])
def test_unusable_normalisation_is_refused(tmp_path, options):
    path = torchvision_file(tmp_path / "tv.pth")
    with pytest.raises(ConfigError, match="must be finite numbers and every std above 0"):
        resolve_spec("tv", {"path": str(path), **options})
