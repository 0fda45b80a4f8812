"""The colour recipe: batched crop + flip on uint8 images, seeded; CIFAR presets that select it; a tiny colour run."""

from pathlib import Path

import pytest
import torch

from qkt_flower.config import load_config
from qkt_flower.data.augment import augmented_copies, batch_augmentation, crop_flip
from qkt_flower.data.datasets import ImageDataset

SUBSET = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10-subset"


def _images(n=6, seed=0) -> torch.Tensor:
    return torch.randint(1, 256, (n, 3, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_crop_flip_keeps_shape_and_dtype_and_is_a_window_of_the_padded_image():
    x = _images()
    out = crop_flip(x, torch.Generator().manual_seed(3), pad=2)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):  # each output is one 8 x 8 window of its padded input, mirrored or not
        windows = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    assert not torch.equal(out, x)  # 6 images: some moved or flipped


def test_crop_flip_is_seeded():
    x = _images()
    a = crop_flip(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, crop_flip(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, crop_flip(x, torch.Generator().manual_seed(2)))


def test_batch_augmentation_none_and_unknown():
    assert batch_augmentation("none", 0) is None
    with pytest.raises(ValueError, match="crop_flip"):
        batch_augmentation("mixup", 0)
    augment = batch_augmentation("crop_flip", 5)
    x = _images()
    assert augment(x).dtype == torch.uint8 and augment(x).shape == x.shape


def test_crop_flip_copies_of_the_asked_classes():
    data = ImageDataset(_images(), torch.tensor([0, 0, 1, 1, 2, 2]), ("a", "b", "c"), (0.5,) * 3, (0.25,) * 3)
    copies = augmented_copies(data, (2,), 3, seed=4, jitter="crop_flip")
    assert len(copies) == 6 and copies.labels.tolist() == [2] * 6
    assert torch.equal(copies.images, augmented_copies(data, (2,), 3, seed=4, jitter="crop_flip").images)


def test_cifar_presets_select_the_colour_recipe_and_the_command_line_still_wins():
    cfg = load_config(["dataset=cifar10"])
    assert (cfg.model.name, cfg.local.epochs, cfg.local.augment, cfg.method.transfer.jitter) == (
        "cnn", 20, "crop_flip", "crop_flip")  # fmt: skip
    assert load_config(["dataset=cifar100"]).local.augment == "crop_flip"
    mine = load_config(["dataset=cifar10", "model=resnet10", "local.epochs=1", "local.augment=none"])
    assert (mine.model.name, mine.local.epochs, mine.local.augment) == ("resnet10", 1, "none")
    grey = load_config([])  # Fashion-MNIST keeps its recipe
    assert (grey.model.name, grey.local.augment, grey.method.transfer.jitter) == ("cnn", "none", "affine")


def test_local_training_with_crop_flip_is_seeded_and_differs_from_plain():
    from qkt_flower.models import build_model
    from qkt_flower.qkt.engine import OptimSpec
    from qkt_flower.qkt.local import train_local

    data = ImageDataset(_images(32), torch.arange(32) % 2, ("a", "b"), (0.5,) * 3, (0.25,) * 3)

    def weights(augment: str) -> torch.Tensor:
        model = build_model("cnn", (3, 8, 8), 2, seed=0)
        train_local(model, data, 1, 8, OptimSpec(), seed=0, augment=augment)
        return model.head.weight.detach().clone()

    assert torch.equal(weights("crop_flip"), weights("crop_flip"))
    assert not torch.equal(weights("crop_flip"), weights("none"))


@pytest.mark.skipif(
    not SUBSET.is_dir(), reason=f"the CIFAR-10 subset is not at {SUBSET} (a development machine's data)"
)
def test_a_tiny_colour_run_on_real_cifar10():
    from qkt_flower.reference import run_reference

    cfg = load_config([f"dataset.root={SUBSET}", "dataset=cifar10", "dataset.download=false",
                       "dataset.train_per_class=60", "dataset.test_per_class=20", "local.epochs=1", "progress=false",
                       "strategy.probe.n=32"])  # fmt: skip
    r = run_reference(cfg)
    assert r["dataset"] == "cifar10" and r["probe"]["quality"]["precision"] > 0
    assert 0.0 <= r["after"]["query_acc"] <= 1.0 and 0.0 <= r["control"]["local_acc"] <= 1.0
