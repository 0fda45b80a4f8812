"""Dataset loaders read the exact on-disk layouts their publishers ship."""

from __future__ import annotations

import gzip
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qkt_flower.data.datasets import DATASETS, ImageDataset, load_dataset
from qkt_flower.data.sources import FASHION_MNIST_CLASSES, PATHMNIST_CLASSES
from qkt_flower.errors import ConfigError, DataError, DataNotFoundError

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------------------------------------------------
# Writers of each publisher's format
# ---------------------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: 0x00 0x00 0x08 ndim, big-endian uint32 dims, C-order data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_fashion_mnist(root: Path, rng: np.random.Generator, n_train=6, n_test=4, gz=True) -> dict:
    """The four Fashion-MNIST IDX files; returns the arrays written."""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(root / (f"{stem}.gz" if gz else stem), array)
    return arrays


def write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def cifar_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` images as CIFAR stores them: uint8 rows of 3072 = 3 channel planes of 32x32, row-major."""
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def write_cifar10(root: Path, rng: np.random.Generator, per_batch=2, n_test=3) -> dict:
    """``cifar-10-batches-py/`` with five train batches, a test batch and ``batches.meta``."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    names = [f"class{i}".encode() for i in range(10)]
    written = {"train_data": [], "train_labels": [], "names": [n.decode() for n in names]}
    for i in range(1, 6):
        data, labels = cifar_rows(rng, per_batch), [int(v) for v in rng.integers(0, 10, per_batch)]
        write_pickle(base / f"data_batch_{i}", {b"batch_label": b"x", b"data": data, b"labels": labels})
        written["train_data"].append(data)
        written["train_labels"] += labels
    data, labels = cifar_rows(rng, n_test), [int(v) for v in rng.integers(0, 10, n_test)]
    write_pickle(base / "test_batch", {b"batch_label": b"t", b"data": data, b"labels": labels})
    write_pickle(base / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    written["train_data"] = np.concatenate(written["train_data"])
    written.update(test_data=data, test_labels=labels)
    return written


def write_cifar100(root: Path, rng: np.random.Generator, n_train=5, n_test=3) -> dict:
    """``cifar-100-python/`` with ``train``, ``test`` and ``meta``."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    written = {"fine_names": [f"fine{i:02d}" for i in range(100)]}
    for split, n in (("train", n_train), ("test", n_test)):
        data = cifar_rows(rng, n)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        coarse = [int(v) for v in rng.integers(0, 20, n)]
        write_pickle(base / split, {b"data": data, b"fine_labels": fine, b"coarse_labels": coarse})
        written[f"{split}_data"], written[f"{split}_fine"], written[f"{split}_coarse"] = data, fine, coarse
    write_pickle(
        base / "meta",
        {
            b"fine_label_names": [n.encode() for n in written["fine_names"]],
            b"coarse_label_names": [f"coarse{i:02d}".encode() for i in range(20)],
        },
    )
    return written


def write_pathmnist(root: Path, rng: np.random.Generator, sizes=(7, 2, 3)) -> dict:
    """``pathmnist.npz`` as medmnist ships it: ``<split>_images`` (N,28,28,3), ``<split>_labels`` (N,1)."""
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 9, (n, 1), dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(root / "pathmnist.npz", **arrays)
    return arrays


def write_png(path: Path, array: np.ndarray) -> None:
    """A PNG of ``array`` (H, W, 3) RGB or (H, W) grayscale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# ---------------------------------------------------------------------------------------------------------
# Shared checks
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def check_split(ds: ImageDataset, n: int, shape: tuple[int, int, int], num_classes: int) -> None:
    assert isinstance(ds, ImageDataset)
    assert ds.images.dtype == torch.uint8
    assert tuple(ds.images.shape) == (n, *shape)
    assert ds.input_shape == shape
    assert ds.labels.dtype == torch.int64
    assert tuple(ds.labels.shape) == (n,)
    assert len(ds) == n
    assert ds.num_classes == num_classes
    assert len(ds.mean) == len(ds.std) == shape[0]
    assert all(s > 0 for s in ds.std)
    assert int(ds.labels.min()) >= 0 and int(ds.labels.max()) < num_classes


# ---------------------------------------------------------------------------------------------------------
# 1. IDX / Fashion-MNIST
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_fashion_mnist_idx_round_trip(tmp_path, rng, gz):
    arrays = write_fashion_mnist(tmp_path, rng, gz=gz)
    train, test = load_dataset("fashion-mnist", tmp_path)
    check_split(train, 6, (1, 28, 28), 10)
    check_split(test, 4, (1, 28, 28), 10)
    assert train.classes == FASHION_MNIST_CLASSES == test.classes
    assert np.array_equal(train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(test.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert train.labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert test.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert train.mean == (0.2860,) and train.std == (0.3530,)


def test_fashion_mnist_mixed_gz_and_raw_files(tmp_path, rng):
    arrays = write_fashion_mnist(tmp_path, rng, gz=True)
    gz_path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    gz_path.unlink()
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", arrays["t10k-labels-idx1-ubyte"])
    _, test = load_dataset("fashion-mnist", tmp_path)
    assert test.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_read_idx_header_and_pixels(tmp_path):
    from qkt_flower.data.idx import read_idx

    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.gz", "a"):
        out = read_idx(write_idx(tmp_path / name, array))
        assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
        assert np.array_equal(out, array)
        assert out.flags.writeable  # torch.from_numpy must not get a read-only buffer


def test_read_idx_big_endian_int32(tmp_path):
    from qkt_flower.data.idx import read_idx

    values = np.array([1, -2, 70000], dtype=">i4")
    path = tmp_path / "ints"
    path.write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + values.tobytes())
    out = read_idx(path)
    assert out.tolist() == [1, -2, 70000]
    assert out.dtype.isnative


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x01\x02\x08\x03" + struct.pack(">3I", 1, 28, 28) + bytes(784), "bad magic"),
        (b"\x00\x00", "bad magic"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "unknown IDX type code"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 6), "truncated IDX header"),
        (b"\x00\x00\x08\x03" + struct.pack(">3I", 6, 28, 28) + bytes(100), "payload has 100 bytes"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 2) + bytes(3), "payload has 3 bytes"),
    ],
    ids=["bad-magic", "too-short", "bad-type", "truncated-header", "truncated-payload", "extra-bytes"],
)
@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_read_idx_rejects_malformed_files(tmp_path, content, message, gz):
    from qkt_flower.data.idx import read_idx

    path = tmp_path / ("bad.gz" if gz else "bad")
    path.write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(ValueError, match=message):
        read_idx(path)


def test_read_idx_cut_off_or_fake_gzip_raises_value_error(tmp_path, rng):
    from qkt_flower.data.idx import read_idx

    full = gzip.compress(idx_bytes(rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError, match="gzip"):
        read_idx(cut)
    fake = tmp_path / "fake.gz"
    fake.write_bytes(idx_bytes(np.zeros((1, 2, 2), np.uint8)))  # raw IDX under a .gz name
    with pytest.raises(ValueError, match="gzip"):
        read_idx(fake)


def test_fashion_mnist_truncated_file_raises_data_error(tmp_path, rng):
    write_fashion_mnist(tmp_path, rng)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*payload"):
        load_dataset("fashion-mnist", tmp_path)


def test_fashion_mnist_image_label_count_mismatch_raises(tmp_path, rng):
    write_fashion_mnist(tmp_path, rng)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))  # 6 images, 5 labels
    with pytest.raises(DataError, match="6 images"):
        load_dataset("fashion-mnist", tmp_path)


@pytest.mark.skipif(not REAL_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist package not installed")
def test_real_fashion_mnist_files_load():
    train, test = load_dataset("fashion-mnist", REAL_FASHION_MNIST)
    check_split(train, 60000, (1, 28, 28), 10)
    check_split(test, 10000, (1, 28, 28), 10)
    assert train.class_counts().tolist() == [6000] * 10
    assert test.class_counts().tolist() == [1000] * 10
    # The published mean/std are those of the real training pixels.
    pixels = train.images.double() / 255
    assert abs(float(pixels.mean()) - train.mean[0]) < 1e-3
    assert abs(float(pixels.std()) - train.std[0]) < 1e-3


# ---------------------------------------------------------------------------------------------------------
# 2-3. CIFAR "python version" pickles
# ---------------------------------------------------------------------------------------------------------


def assert_cifar_pixels(images: torch.Tensor, rows: np.ndarray) -> None:
    """Pixel [c, h, w] of image i is byte c*1024 + h*32 + w of row i."""
    assert np.array_equal(images.numpy().reshape(len(rows), 3072), rows)
    for i, c, h, w in [(0, 0, 0, 0), (0, 1, 5, 7), (1, 2, 31, 0), (len(rows) - 1, 2, 31, 31)]:
        assert int(images[i, c, h, w]) == int(rows[i, c * 1024 + h * 32 + w])


def test_cifar10_python_pickles(tmp_path, rng):
    written = write_cifar10(tmp_path, rng)
    train, test = load_dataset("cifar10", tmp_path)
    check_split(train, 10, (3, 32, 32), 10)
    check_split(test, 3, (3, 32, 32), 10)
    assert train.classes == tuple(written["names"]) == test.classes
    assert all(isinstance(c, str) for c in train.classes)
    assert_cifar_pixels(train.images, written["train_data"])
    assert_cifar_pixels(test.images, written["test_data"])
    assert train.labels.tolist() == written["train_labels"]  # batches concatenated in order 1..5
    assert test.labels.tolist() == written["test_labels"]
    assert train.mean == (0.4914, 0.4822, 0.4465)


def test_cifar10_missing_batch_names_it(tmp_path, rng):
    write_cifar10(tmp_path, rng)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)


def test_cifar100_python_pickles_use_fine_labels(tmp_path, rng):
    written = write_cifar100(tmp_path, rng)
    train, test = load_dataset("cifar100", tmp_path)
    check_split(train, 5, (3, 32, 32), 100)
    check_split(test, 3, (3, 32, 32), 100)
    assert train.classes == tuple(written["fine_names"]) == test.classes
    assert_cifar_pixels(train.images, written["train_data"])
    assert_cifar_pixels(test.images, written["test_data"])
    assert train.labels.tolist() == written["train_fine"]
    assert test.labels.tolist() == written["test_fine"]
    assert train.std == (0.2673, 0.2564, 0.2762)


# ---------------------------------------------------------------------------------------------------------
# 4. PathMNIST
# ---------------------------------------------------------------------------------------------------------


def test_pathmnist_npz(tmp_path, rng):
    arrays = write_pathmnist(tmp_path, rng)
    train, test = load_dataset("pathmnist", tmp_path)
    check_split(train, 7, (3, 28, 28), 9)
    check_split(test, 3, (3, 28, 28), 9)
    assert train.classes == PATHMNIST_CLASSES == test.classes
    # (N, H, W, C) on disk -> (N, C, H, W) in memory, values unchanged.
    assert np.array_equal(train.images.permute(0, 2, 3, 1).numpy(), arrays["train_images"])
    assert np.array_equal(test.images.permute(0, 2, 3, 1).numpy(), arrays["test_images"])
    assert int(train.images[2, 1, 4, 9]) == int(arrays["train_images"][2, 4, 9, 1])
    assert train.labels.tolist() == arrays["train_labels"][:, 0].tolist()
    assert test.labels.tolist() == arrays["test_labels"][:, 0].tolist()
    # No published statistics: they come from the train pixels (val is not used).
    pixels = torch.from_numpy(arrays["train_images"]).double() / 255
    expected_mean = pixels.mean(dim=(0, 1, 2))
    assert torch.allclose(torch.tensor(train.mean, dtype=torch.double), expected_mean)
    assert train.mean == test.mean and train.std == test.std


# ---------------------------------------------------------------------------------------------------------
# 5. Image folder (CINIC-10 layout)
# ---------------------------------------------------------------------------------------------------------


def write_image_folder(root: Path, rng: np.random.Generator, layout: dict[str, dict[str, int]]) -> dict:
    """``root/<split>/<class>/<i>.png`` 32x32 RGB; ``layout[split][class]`` = count. Returns the arrays."""
    written = {}
    for split, classes in layout.items():
        for cls, count in classes.items():
            for i in range(count):
                array = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                write_png(root / split / cls / f"{i:03d}.png", array)
                written[(split, cls, i)] = array
    return written


def test_image_folder_cinic_layout(tmp_path, rng):
    # Written in non-sorted order: ImageFolder sorts class folders, labels follow that order.
    layout = {"train": {"truck": 2, "airplane": 3, "cat": 1}, "test": {"cat": 1, "truck": 1, "airplane": 1}}
    written = write_image_folder(tmp_path, rng, layout)
    (tmp_path / "valid").mkdir()  # CINIC-10's third split is ignored
    train, test = load_dataset("imagefolder", tmp_path)
    check_split(train, 6, (3, 32, 32), 3)
    check_split(test, 3, (3, 32, 32), 3)
    assert train.classes == ("airplane", "cat", "truck") == test.classes
    assert train.labels.tolist() == [0, 0, 0, 1, 2, 2]
    assert test.labels.tolist() == [0, 1, 2]
    order = [("airplane", 0), ("airplane", 1), ("airplane", 2), ("cat", 0), ("truck", 0), ("truck", 1)]
    for row, (cls, i) in enumerate(order):
        assert np.array_equal(train.images[row].permute(1, 2, 0).numpy(), written[("train", cls, i)])
    # Statistics come from the train split.
    pixels = torch.stack([torch.from_numpy(written[("train", c, i)]) for c, i in order]).double() / 255
    assert torch.allclose(torch.tensor(train.mean, dtype=torch.double), pixels.mean(dim=(0, 1, 2)))
    assert test.mean == train.mean


def test_image_folder_resizes_and_converts_to_rgb(tmp_path, rng):
    write_image_folder(tmp_path, rng, {"train": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1}})
    big = np.full((40, 40, 3), (10, 200, 90), dtype=np.uint8)
    write_png(tmp_path / "train" / "a" / "big.png", big)
    gray = np.full((32, 32), 77, dtype=np.uint8)
    write_png(tmp_path / "train" / "b" / "gray.png", gray)
    assert Image.open(tmp_path / "train" / "b" / "gray.png").mode == "L"
    train, _ = load_dataset("imagefolder", tmp_path)
    check_split(train, 4, (3, 32, 32), 2)
    files = ["a/000.png", "a/big.png", "b/000.png", "b/gray.png"]  # ImageFolder's sorted order
    resized = train.images[files.index("a/big.png")]
    # A constant-colour image stays that colour after resizing.
    assert resized.shape == (3, 32, 32)
    assert resized[0].eq(10).all() and resized[1].eq(200).all() and resized[2].eq(90).all()
    assert train.images[files.index("b/gray.png")].eq(77).all()


def test_image_folder_image_size_option(tmp_path, rng):
    write_image_folder(tmp_path, rng, {"train": {"a": 2}, "test": {"a": 1}})
    train, test = load_dataset("imagefolder", tmp_path, image_size=16)
    check_split(train, 2, (3, 16, 16), 1)
    check_split(test, 1, (3, 16, 16), 1)


def test_image_folder_class_mismatch_and_empty_split(tmp_path, rng):
    write_image_folder(tmp_path, rng, {"train": {"a": 1, "b": 1}, "test": {"a": 1}})
    with pytest.raises(DataNotFoundError, match="class folders differ"):
        load_dataset("imagefolder", tmp_path)
    empty = tmp_path / "empty"
    (empty / "train" / "a").mkdir(parents=True)
    (empty / "test").mkdir()
    with pytest.raises(DataNotFoundError, match="root/train/<class>"):
        load_dataset("imagefolder", empty)


# ---------------------------------------------------------------------------------------------------------
# 6. Missing data and unknown names
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("fashion-mnist", "apt-get install -y dataset-fashion-mnist"),
        ("cifar10", "download"),
        ("cifar100", "download"),
        ("pathmnist", "download"),
        ("imagefolder", "train"),
    ],
)
def test_missing_data_says_how_to_get_it(tmp_path, name, hint):
    with pytest.raises(DataNotFoundError, match=hint) as info:
        load_dataset(name, tmp_path)
    assert str(tmp_path) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_every_registered_dataset_has_a_missing_data_case():
    assert set(DATASETS) == {"fashion-mnist", "cifar10", "cifar100", "pathmnist", "imagefolder"}


def test_unknown_dataset_name_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="dataset.name") as info:
        load_dataset("mnist-but-wrong", tmp_path)
    assert isinstance(info.value, ValueError)
    assert info.value.key == "dataset.name" and info.value.value == "mnist-but-wrong"
    assert "cifar10" in str(info.value)


def test_root_with_tilde_is_expanded(tmp_path, rng, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_pathmnist(tmp_path / "data", rng)
    train, _ = load_dataset("pathmnist", "~/data")
    assert len(train) == 7


# ---------------------------------------------------------------------------------------------------------
# 7. ImageDataset.subset / class_counts
# ---------------------------------------------------------------------------------------------------------


def make_dataset(labels: list[int], num_classes: int = 4) -> ImageDataset:
    n = len(labels)
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    classes = tuple(f"c{i}" for i in range(num_classes))
    return ImageDataset(images, torch.tensor(labels, dtype=torch.long), classes, (0.5,), (0.25,))


def test_subset_keeps_rows_classes_and_stats():
    ds = make_dataset([0, 1, 1, 3, 0, 2])
    for indices in ([4, 1, 1], torch.tensor([4, 1, 1]), np.array([4, 1, 1])):
        sub = ds.subset(indices)
        assert len(sub) == 3
        assert sub.labels.tolist() == [0, 1, 1]
        assert sub.images[:, 0, 0, 0].tolist() == [4, 1, 1]  # image i holds the value i
        assert sub.classes == ds.classes and sub.mean == ds.mean and sub.std == ds.std
        assert sub.images.dtype == torch.uint8 and sub.labels.dtype == torch.int64
    empty = ds.subset([])
    assert len(empty) == 0 and empty.input_shape == (1, 2, 2)
    assert empty.class_counts().tolist() == [0, 0, 0, 0]


def test_class_counts_cover_the_whole_label_space():
    ds = make_dataset([0, 1, 1, 0, 0], num_classes=4)
    counts = ds.class_counts()
    assert counts.tolist() == [3, 2, 0, 0]  # absent classes 2 and 3 still counted
    assert counts.dtype == torch.int64
    assert ds.subset([1, 2]).class_counts().tolist() == [0, 2, 0, 0]


def test_loaded_subset_class_counts_match_labels(tmp_path, rng):
    arrays = write_pathmnist(tmp_path, rng)
    train, _ = load_dataset("pathmnist", tmp_path)
    expected = np.bincount(arrays["train_labels"][:, 0], minlength=9)
    assert train.class_counts().tolist() == expected.tolist()
    sub = train.subset([0, 3])
    assert sub.class_counts().sum() == 2
    assert np.array_equal(sub.images.numpy(), train.images.numpy()[[0, 3]])


U8 = torch.uint8


@pytest.mark.parametrize(
    ("images", "labels", "mean", "message"),
    [
        (torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), (0.5,), "uint8"),
        (torch.zeros(2, 2, 2, dtype=U8), torch.zeros(2, dtype=torch.long), (0.5,), "uint8"),
        (torch.zeros(2, 1, 2, 2, dtype=U8), torch.zeros(3, dtype=torch.long), (0.5,), "2 images"),
        (torch.zeros(2, 1, 2, 2, dtype=U8), torch.zeros(2, dtype=torch.long), (0.5, 0.5), "mean/std"),
    ],
    ids=["float-images", "3d-images", "label-count", "stats-length"],
)
def test_image_dataset_validates(images, labels, mean, message):
    with pytest.raises(ValueError, match=message):
        ImageDataset(images, labels, ("a",), mean, mean)


# ---------------------------------------------------------------------------------------------------------
# Damaged or crafted files: one DataError naming the file, nothing executed
# ---------------------------------------------------------------------------------------------------------


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))  # what a crafted pickle would do on load: run code


@pytest.mark.parametrize("damage", ["cut-gz", "short-raw"])
def test_a_damaged_fashion_mnist_file_is_one_data_error(tmp_path, rng, damage):
    write_fashion_mnist(tmp_path, rng, gz=damage == "cut-gz")
    name = "train-images-idx3-ubyte" + (".gz" if damage == "cut-gz" else "")
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=name):
        load_dataset("fashion-mnist", tmp_path)


def test_a_crafted_cifar_pickle_runs_nothing_and_is_one_data_error(tmp_path, rng):
    write_cifar10(tmp_path, rng)
    marker = tmp_path / "code-ran"
    write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_3", {b"data": _RunsCode(marker), b"labels": []})
    with pytest.raises(DataError, match="data_batch_3: not a readable CIFAR batch"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()
    write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_3", {b"labels": [1]})  # no data key
    with pytest.raises(DataError, match="not CIFAR batches"):
        load_dataset("cifar10", tmp_path)
    write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_3", {b"data": cifar_rows(rng, 2), b"labels": [1, 2]})
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="test_batch: not a readable CIFAR batch"):
        load_dataset("cifar10", tmp_path)


class _ObjectArray:
    """An array of Python objects whose pointers are the file's bytes: reading it would crash the process."""

    def __reduce__(self):
        return (np.ndarray, ((1,), np.dtype("O"), b"A" * 8))


def test_an_object_array_in_a_cifar_batch_is_refused_before_it_is_read(tmp_path, rng):
    write_cifar10(tmp_path, rng)
    write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_2", {b"data": _ObjectArray(), b"labels": [0]})
    with pytest.raises(DataError, match="data_batch_2: not a readable CIFAR batch"):
        load_dataset("cifar10", tmp_path)


def test_a_corrupt_image_is_one_data_error_and_a_missing_test_folder_is_said_first(tmp_path, rng):
    write_image_folder(tmp_path, rng, {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}})
    bad = next((tmp_path / "train" / "b").iterdir())
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=f"{bad.name}: not a readable image"):
        load_dataset("imagefolder", tmp_path)
    for f in (tmp_path / "test").rglob("*.png"):
        f.unlink()
    for d in sorted((tmp_path / "test").iterdir()):
        d.rmdir()
    (tmp_path / "test").rmdir()
    with pytest.raises(DataNotFoundError, match="test not found"):  # before the corrupt train image is read
        load_dataset("imagefolder", tmp_path)


def test_a_damaged_pathmnist_file_is_one_data_error(tmp_path, rng):
    write_pathmnist(tmp_path, rng)
    path = tmp_path / "pathmnist.npz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="pathmnist.npz: not a readable MedMNIST file"):
        load_dataset("pathmnist", tmp_path)


def test_the_reference_command_says_a_damaged_file_on_one_line(tmp_path, rng):
    write_fashion_mnist(tmp_path / "data", rng)
    (tmp_path / "data" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00cut")
    cmd = [sys.executable, "-m", "qkt_flower.reference", f"dataset.root={tmp_path / 'data'}",
           f"hydra.run.dir={tmp_path / 'out'}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: "), done.stderr[-2000:]
    assert "t10k-labels-idx1-ubyte.gz" in done.stderr and len(done.stderr.strip().splitlines()) == 1
