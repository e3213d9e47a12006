"""Shared fixtures: real images written in each supported on-disk format (from scikit-learn's digits)."""

from __future__ import annotations

import gzip
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from vitsearch.config import TrainConfig

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

MICRO = dict(model="vit_micro", data="digits", image_size=16, patch_size=4, epochs=2, batch_size=64,
             warmup_epochs=0, lr=2e-3, lr_scaling="none", val_fraction=0.2)


def micro_config(**changes) -> TrainConfig:
    return TrainConfig.from_dict({**MICRO, **changes})


def digit_images(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n digits as uint8 (n, size, size) grayscale images and their labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = (d.images[:n] * 255 / 16).round().astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(i).resize((size, size), Image.BILINEAR)) for i in imgs])
    return big, d.target[:n].astype(np.uint8)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """A class-folder dataset of 120 real digit images as PNG (RGB) and JPEG (grayscale) files."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imagefolder")
    images, labels = digit_images(120, 20)
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / f"class_{label}"
        folder.mkdir(exist_ok=True)
        if i % 2:
            Image.fromarray(img).convert("RGB").save(folder / f"{i}.png")
        else:
            Image.fromarray(img).convert("RGB").save(folder / f"{i}.jpg", quality=95)
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory) -> Path:
    """The Debian package's folder when installed (.ci/run installs it); else real images in IDX files."""
    if (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        return FASHION_MNIST_DIR
    root = tmp_path_factory.mktemp("fashion")
    images, labels = digit_images(300, 28)
    write_idx(root / "train-images-idx3-ubyte.gz", images)
    write_idx(root / "train-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="session")
def cifar10_archive(tmp_path_factory) -> Path:
    """A cifar-10-python.tar.gz in the standard layout, holding real (digit) images at 32x32 RGB."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    images, labels = digit_images(100, 32)
    rgb = np.repeat(images[:, None], 3, axis=1).reshape(100, -1)
    for b in range(5):
        batch = {b"data": rgb[b * 20:(b + 1) * 20], b"labels": [int(x) for x in labels[b * 20:(b + 1) * 20]]}
        (folder / f"data_batch_{b + 1}").write_bytes(pickle.dumps(batch))
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": rgb[:10], b"labels": [0] * 10}))
    names = [n.encode() for n in "airplane automobile bird cat deer dog frog horse ship truck".split()]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return archive
