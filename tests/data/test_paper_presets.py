"""The full-size paper presets (``+paper=<dataset>``): what they select, and one end-to-end run of each on small
files written here in the dataset's exact on-disk format (the full archives cannot be downloaded in CI)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_sources import write_cifar10, write_cifar100, write_image_folder, write_pathmnist

from qkt_flower.config import load_config

PRESETS = {"cifar10": "cifar10", "cifar100": "cifar100", "cinic10": "imagefolder", "pathmnist": "pathmnist"}


@pytest.mark.parametrize("preset", PRESETS)
def test_paper_preset_selects_resnet18_the_colour_recipe_and_every_baseline(preset):
    cfg = load_config([f"+paper={preset}"])
    assert (cfg.dataset.name, cfg.model.name) == (PRESETS[preset], "resnet18")
    assert (cfg.local.epochs, cfg.local.augment, cfg.method.transfer.jitter) == (20, "crop_flip", "crop_flip")
    assert cfg.baselines.one_round == ["ensemble", "vanilla_kd", "feddf"]
    assert cfg.baselines.federated == ["fedavg", "fedprox"]
    assert cfg.partition.classes_per_client == (20 if preset == "cifar100" else 3)
    assert load_config([f"+paper={preset}", "model=resnet10"]).model.name == "resnet10"  # the command line wins


def write_files(preset: str, root, rng: np.random.Generator) -> None:
    """A few hundred images of ``preset``'s dataset in its on-disk format (random pixels and labels)."""
    if preset == "cifar10":
        write_cifar10(root, rng, per_batch=60, n_test=60)
    elif preset == "cifar100":
        write_cifar100(root, rng, n_train=1200, n_test=300)
    elif preset == "pathmnist":
        write_pathmnist(root, rng, sizes=(270, 9, 90))
    else:
        names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        write_image_folder(root, rng, {"train": dict.fromkeys(names, 30), "test": dict.fromkeys(names, 6)})


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_paper_preset_runs_end_to_end_on_written_files(preset, tmp_path):
    from qkt_flower.reference import run_reference

    write_files(preset, tmp_path, np.random.default_rng(0))
    # the small CNN stands in for ResNet-18 here (its 2-core cost is the only difference; the ResNet-18 forward
    # on each dataset's shape is checked below)
    cfg = load_config([f"+paper={preset}", f"dataset.root={tmp_path}", "dataset.download=false", "local.epochs=1",
                       "model=cnn", "method.phases.0.epochs=1", "method.calibration.augment=1",
                       "partition.num_clients=4", "query.min_local_count=2",
                       "strategy.probe.n=16", "progress=false",
                       f"checkpoint_dir={tmp_path / 'ckpt'}", "partition_cache=null"])  # fmt: skip
    r = run_reference(cfg)
    assert r["dataset"] == PRESETS[preset]
    for row in ("before", "after", "control", "ensemble", "vanilla_kd", "feddf"):  # the reference runs these
        assert 0.0 <= r[row]["local_acc"] <= 1.0, row  # query_acc is NaN when the few test images miss Q
        assert math.isnan(r[row]["query_acc"]) or 0.0 <= r[row]["query_acc"] <= 1.0, row


@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 28, 28)])
def test_resnet18_of_the_presets_takes_each_datasets_shape(shape):
    import torch

    from qkt_flower.models import build_model

    model = build_model("resnet18", shape, 9, seed=0).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, *shape)).shape == (2, 9) and model.features(torch.zeros(2, *shape)).ndim == 2
