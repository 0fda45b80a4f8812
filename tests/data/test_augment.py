"""Augmented query shots: seeded, label-preserving, only the asked classes, really different images."""

import pytest
import torch

from qkt_flower.data.augment import augmented_copies, shot_jitter, shot_transform
from qkt_flower.data.datasets import ImageDataset
from qkt_flower.qkt.task import QueryTask
from qkt_flower.qkt.transfer import TransferSpec, transfer_set


def _data() -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 1, 16, 16), generator=g, dtype=torch.uint8)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 0, 1])
    return ImageDataset(images, labels, ("a", "b", "c"), (0.5,), (0.25,))


def test_copies_of_the_query_rows_only_seeded_and_changed():
    data = _data()
    a = augmented_copies(data, (2,), copies=4, seed=3)
    assert len(a) == 8 and a.labels.tolist() == [2] * 8 and a.images.dtype == torch.uint8
    assert torch.equal(a.images, augmented_copies(data, (2,), copies=4, seed=3).images)  # same seed, same copies
    assert not torch.equal(a.images, augmented_copies(data, (2,), copies=4, seed=4).images)
    originals = data.images[data.labels == 2]
    assert not any(torch.equal(img, originals[i % 2]) for i, img in enumerate(a.images))  # not plain duplicates


def _grown(data, shots, local, query=(2,)):
    return transfer_set(QueryTask(data, query, (0, 1)), TransferSpec(shots, local), seed=0).data


def test_transfer_set_grows_by_the_copies_and_keeps_its_rows_first():
    data = _data()
    grown = _grown(data, 5, 0)
    assert len(grown) == len(data) + 10
    assert torch.equal(grown.images[: len(data)], data.images)  # cached logits index the original rows unchanged
    assert _grown(data, 0, 0) is data
    assert len(augmented_copies(data, (7,), copies=3, seed=0)) == 0  # no shot of the class: nothing added


def test_jittered_local_rows_join_the_shot_copies_with_their_own_labels():
    data = _data()
    grown = _grown(data, 5, 2)
    assert len(grown) == len(data) + 10 + 2 * 10  # 2 shots x 5 + 10 local images x 2; class-"c"-free rows only
    assert torch.equal(grown.images[: len(data) + 10], _grown(data, 5, 0).images)
    local = grown.subset(torch.arange(len(data) + 10, len(grown)))
    assert sorted(local.labels.tolist()) == sorted(data.labels[data.labels < 2].tolist() * 2)
    assert not torch.equal(local.images[:10], data.images[data.labels < 2])  # jittered, not duplicated


@pytest.mark.parametrize("shape", [(300, 1, 28, 28), (120, 3, 32, 32), (7, 1, 9, 13), (3000, 1, 8, 8)])
def test_batched_jitter_equals_torchvisions_transform_image_by_image(shape):
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    transform = shot_transform()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        expected = torch.stack([transform(x) for x in images])
    before = torch.random.get_rng_state()
    assert torch.equal(shot_jitter(images, 11), expected)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random stream is left alone
