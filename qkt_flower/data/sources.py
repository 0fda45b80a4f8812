"""Loaders of the supported datasets, each reading the files in the exact layout its publisher ships.

Downloads (CIFAR through torchvision, PathMNIST through the ``medmnist`` package) happen only with
``download=True``; offline, a missing file raises :class:`~qkt_flower.errors.DataNotFoundError` with a
message that says how to get it.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from qkt_flower.data.idx import read_idx
from qkt_flower.data.images import ImageDataset, channel_stats
from qkt_flower.errors import DataError, DataNotFoundError

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Published statistics of the training split (pixel units in [0, 1]).
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
PATHMNIST_CLASSES = (
    "adipose",
    "background",
    "debris",
    "lymphocytes",
    "mucus",
    "smooth muscle",
    "normal colon mucosa",
    "cancer-associated stroma",
    "colorectal adenocarcinoma epithelium",
)


def _split(images: np.ndarray, labels: np.ndarray, classes, stats) -> ImageDataset:
    """Wrap numpy arrays (N, H, W) or (N, H, W, C) as an :class:`ImageDataset`."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()
    try:
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64).reshape(-1))
        return ImageDataset(x, y, tuple(classes), *stats)
    except (ValueError, TypeError) as err:  # e.g. 6 images but 5 labels: the files do not belong together
        raise DataError(f"the dataset files do not fit together: {err}") from None


def load_fashion_mnist(root: Path, download: bool = False) -> tuple[ImageDataset, ImageDataset]:
    """Fashion-MNIST from the four IDX files (``.gz`` or raw) in ``root``.

    The Debian package ``dataset-fashion-mnist`` installs them under ``/usr/share/datasets/fashion-mnist``.
    """
    del download  # offline package; nothing to download
    files = {}
    for key, stem in [
        ("xtr", "train-images-idx3-ubyte"),
        ("ytr", "train-labels-idx1-ubyte"),
        ("xte", "t10k-images-idx3-ubyte"),
        ("yte", "t10k-labels-idx1-ubyte"),
    ]:
        found = [root / f"{stem}.gz", root / stem]
        path = next((p for p in found if p.is_file()), None)
        if path is None:
            raise DataNotFoundError(
                f"Fashion-MNIST file {stem}(.gz) not found in {root}. Install it with "
                "`sudo apt-get install -y dataset-fashion-mnist` (files go to /usr/share/datasets/fashion-mnist) "
                "or set dataset.root to a folder holding the four IDX files."
            )
        try:
            files[key] = read_idx(path)
        except (OSError, ValueError) as err:  # cut-off .gz, wrong magic, payload shorter than its header says
            raise DataError(f"{err}: replace the file (dataset-fashion-mnist ships intact copies)") from None
    train = _split(files["xtr"], files["ytr"], FASHION_MNIST_CLASSES, FASHION_MNIST_STATS)
    test = _split(files["xte"], files["yte"], FASHION_MNIST_CLASSES, FASHION_MNIST_STATS)
    return train, test


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR batch holds (dicts, lists, bytes, numpy arrays); any other global is refused.

    ``pickle.load`` runs whatever a crafted file names; this reader cannot.
    """

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR batch")
        if name == "dtype":
            return _plain_dtype
        return super().find_class(module, name)


def _plain_dtype(*args) -> np.dtype:
    """``numpy.dtype`` as a batch may use it: never one that holds Python objects.

    An object array built from a file's bytes holds raw pointers, which crash the process when read.
    """
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("an object dtype is not part of a CIFAR batch")
    return dtype


def _holds_objects(value) -> bool:
    """Whether ``value`` (a batch or anything in it) holds an array of Python objects; no element is read."""
    if isinstance(value, np.ndarray):
        return value.dtype.hasobject
    if isinstance(value, dict):
        return any(_holds_objects(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_objects(v) for v in value)
    return False


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            out = _BatchUnpickler(fh, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise DataError(f"{path}: not a readable CIFAR batch ({type(err).__name__}): re-extract the archive") from None
    if not isinstance(out, dict) or _holds_objects(out):
        raise DataError(f"{path}: not a CIFAR batch (a dict of lists and uint8 arrays): re-extract the archive")
    return out


def _load_cifar(
    root: Path, download: bool, folder: str, train_files, test_files, meta_file, label_key, names_key, stats, tv_class
) -> tuple[ImageDataset, ImageDataset]:
    """Read the CIFAR "python version" pickles (the layout torchvision downloads)."""
    base = root / folder
    if download and not base.is_dir():
        try:
            tv_class(str(root), train=True, download=True)
        except Exception as err:  # network errors come in many types; the message is what matters
            raise DataNotFoundError(f"could not download {folder} into {root}: {err}") from err
    missing = [f for f in [*train_files, *test_files, meta_file] if not (base / f).is_file()]
    if missing:
        raise DataNotFoundError(
            f"{folder} not found in {root} (missing {', '.join(missing)}). Run with dataset.download=true "
            f"(needs internet) or extract the official 'python version' archive into {root}."
        )

    def read(files):
        parts = [_unpickle(base / f) for f in files]
        try:
            if any(np.asarray(p[b"data"]).dtype != np.uint8 for p in parts):
                raise ValueError("data is not uint8")
            data = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            labels = np.concatenate([np.asarray(p[label_key], dtype=np.int64) for p in parts])
        except (KeyError, ValueError, TypeError) as err:
            raise DataError(
                f"{base}: {', '.join(files)} are not CIFAR batches ({err!r}): re-extract the archive"
            ) from None
        if len(data) != len(labels):
            raise DataError(f"{base}: {len(data)} images but {len(labels)} labels in {', '.join(files)}")
        return data, labels

    meta = _unpickle(base / meta_file)
    if names_key not in meta:
        raise DataError(f"{base / meta_file}: no {names_key!r} in it: re-extract the archive")
    names = [n.decode() if isinstance(n, bytes) else n for n in meta[names_key]]
    return _split(*read(train_files), names, stats), _split(*read(test_files), names, stats)


def load_cifar10(root: Path, download: bool = False) -> tuple[ImageDataset, ImageDataset]:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (torchvision's download layout)."""
    from torchvision.datasets import CIFAR10

    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    return _load_cifar(
        root,
        download,
        "cifar-10-batches-py",
        train_files,
        ["test_batch"],
        "batches.meta",
        b"labels",
        b"label_names",
        CIFAR10_STATS,
        CIFAR10,
    )


def load_cifar100(root: Path, download: bool = False) -> tuple[ImageDataset, ImageDataset]:
    """CIFAR-100 (fine labels) from ``root/cifar-100-python`` (torchvision's download layout)."""
    from torchvision.datasets import CIFAR100

    return _load_cifar(
        root,
        download,
        "cifar-100-python",
        ["train"],
        ["test"],
        "meta",
        b"fine_labels",
        b"fine_label_names",
        CIFAR100_STATS,
        CIFAR100,
    )


def load_pathmnist(root: Path, download: bool = False, size: int = 28) -> tuple[ImageDataset, ImageDataset]:
    """PathMNIST (MedMNIST v2) from ``root/pathmnist.npz`` (``pathmnist_<size>.npz`` for size > 28).

    The file is the one the ``medmnist`` package downloads; ``download=True`` uses that package
    (``pip install -e .[medmnist]``).
    """
    path = root / ("pathmnist.npz" if size == 28 else f"pathmnist_{size}.npz")
    if download and not path.is_file():
        try:
            import medmnist
        except ImportError as err:
            raise DataNotFoundError(
                "downloading PathMNIST needs the medmnist package: pip install -e .[medmnist]"
            ) from err
        root.mkdir(parents=True, exist_ok=True)
        try:
            medmnist.PathMNIST(split="train", download=True, root=str(root), size=size)
        except Exception as err:
            raise DataNotFoundError(f"could not download PathMNIST into {root}: {err}") from err
    if not path.is_file():
        raise DataNotFoundError(
            f"{path} not found. Run with dataset.download=true (needs internet and `pip install -e .[medmnist]`) "
            "or place the MedMNIST file pathmnist.npz there."
        )
    try:
        with np.load(path) as npz:  # allow_pickle stays False: an .npz cannot run code
            xtr, ytr, xte, yte = (npz[k] for k in ("train_images", "train_labels", "test_images", "test_labels"))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable MedMNIST file ({type(err).__name__}: {err})") from None
    stats = channel_stats(torch.from_numpy(xtr[:10000]).permute(0, 3, 1, 2))
    return _split(xtr, ytr, PATHMNIST_CLASSES, stats), _split(xte, yte, PATHMNIST_CLASSES, stats)


def load_image_folder(root: Path, download: bool = False, image_size: int = 32) -> tuple[ImageDataset, ImageDataset]:
    """Any folder of images in torchvision ``ImageFolder`` layout: ``root/{train,test}/<class>/*.png``.

    This is how CINIC-10 ships (its ``valid`` split is not used). Images are converted to RGB and
    resized to ``image_size`` once, at load time; normalisation statistics come from the train split.
    """
    del download
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor, resize

    splits = {}
    layout = (
        "an image-folder dataset needs root/train/<class>/*.png and root/test/<class>/*.png "
        "(CINIC-10: extract CINIC-10.tar.gz and point dataset.root at it)."
    )
    for split in ("train", "test"):  # both folders first: a missing test/ is said before train/ is decoded
        if not (root / split).is_dir():
            raise DataNotFoundError(f"{root / split} not found: {layout}")
    for split in ("train", "test"):
        try:
            folder = ImageFolder(str(root / split))
        except FileNotFoundError as err:  # no class folders, or a class folder without images
            raise DataNotFoundError(f"{root / split}: {err} ({layout})") from err
        if not folder.samples:
            raise DataNotFoundError(f"{root / split} holds no images")
        images = []
        for path, _ in folder.samples:
            try:
                with Image.open(path) as img:
                    t = pil_to_tensor(img.convert("RGB"))
            except (OSError, ValueError, Image.DecompressionBombError) as err:  # UnidentifiedImageError: OSError
                raise DataError(f"{path}: not a readable image ({type(err).__name__}): remove or replace it") from None
            if t.shape[1:] != (image_size, image_size):
                t = resize(t, [image_size, image_size], antialias=True)
            images.append(t)
        splits[split] = (torch.stack(images), torch.tensor(folder.targets, dtype=torch.long), folder.classes)
    if splits["train"][2] != splits["test"][2]:
        raise DataNotFoundError(f"train and test class folders differ under {root}")
    stats = channel_stats(splits["train"][0])
    return tuple(ImageDataset(x, y, tuple(c), *stats) for x, y, c in splits.values())  # type: ignore[return-value]
