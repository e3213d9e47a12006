"""Dataset specs on real files, split determinism, and missing-data messages."""

import numpy as np
import pytest
import torch
from conftest import micro_config

from vitsearch.data import load_data
from vitsearch.errors import DataError
from vitsearch.train import train


def test_digits_shape_and_classes():
    data = load_data(micro_config(image_size=None))
    assert data.image_size == 8 and data.channels == 1 and data.num_classes == 10
    assert len(data.train_y) + len(data.val_y) == 1797
    assert data.train_x.dtype == torch.uint8 and int(data.train_x.max()) == 255


def test_digits_are_scikit_learns_images_and_labels():
    """The loader reads scikit-learn's data file itself (no sklearn import): same images, same labels."""
    from sklearn.datasets import load_digits

    data = load_data(micro_config(image_size=None))
    digits = load_digits()
    expected = sorted((np.round(img * 255.0 / 16.0).astype(np.uint8).tobytes(), int(y))
                      for img, y in zip(digits.images, digits.target))
    images, labels = torch.cat([data.train_x, data.val_x]), torch.cat([data.train_y, data.val_y])
    assert sorted((img.numpy().tobytes(), int(y)) for img, y in zip(images[:, 0], labels)) == expected


def test_split_is_deterministic_from_the_seed_and_disjoint():
    a, b, c = (load_data(micro_config(seed=s)) for s in (0, 0, 1))
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.val_x, c.val_x)
    train_rows = {row.numpy().tobytes() for row in a.train_x.flatten(1)}
    overlap = sum(row.numpy().tobytes() in train_rows for row in a.val_x.flatten(1))
    assert overlap < 0.05 * len(a.val_y)  # digits holds a few exact duplicate images, no more


def test_fashion_mnist_from_idx_files(fashion_mnist_dir):
    data = load_data(micro_config(data=f"fashion_mnist:{fashion_mnist_dir}", image_size=None, data_subset=200))
    assert data.image_size == 28 and data.channels == 1 and data.num_classes == 10
    assert len(data.train_y) == 200
    assert data.train_x.float().std() > 10  # real pictures, not blank


@pytest.mark.parametrize("sides, patch_size, expected", [
    ((375, 375, 333), None, 224),  # photos: at most 224 px (14x14 patches of 16), not patch 1 at 375 px
    ((150, 150, 150), None, 144),  # 16-px patches, 9x9; at 150 px patch 2 gave 5,625 tokens
    ((25, 25, 26), None, 24),  # 12x12 patches of 2; at 25 px only patch 1 divides
    ((25, 25, 26), 5, 25),  # a patch_size set: a multiple of it
    ((20, 20, 20), None, 20),  # sizes that fit already stay
])
def test_an_image_folders_native_size_fits_a_patch_grid(tmp_path, sides, patch_size, expected):
    """An image folder without image_size trains at its median shorter side, capped at 224 px and rounded
    down to a multiple of the patch, so the auto patch never makes thousands of tokens."""
    from conftest import digit_images
    from PIL import Image

    images, _ = digit_images(6, 8)
    for i, img in enumerate(images):
        side = sides[i % len(sides)]
        folder = tmp_path / f"class_{i % 2}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(img).resize((side + 40, side)).convert("RGB").save(folder / f"{i}.png")
    for loader in ("memory", "stream"):
        cfg = micro_config(data=f"imagefolder:{tmp_path}", image_size=None, patch_size=patch_size, loader=loader)
        assert load_data(cfg).image_size == expected


def test_image_folder_reads_pngs_and_jpegs(image_folder):
    data = load_data(micro_config(data=f"imagefolder:{image_folder}", image_size=None))
    assert data.image_size == 20 and data.num_classes == 10
    assert data.channels == 3  # saved as RGB
    assert len(data.train_y) + len(data.val_y) == 120
    resized = load_data(micro_config(data=f"imagefolder:{image_folder}", image_size=16))
    assert resized.image_size == 16


def test_cifar10_archive_and_folder(cifar10_archive, tmp_path):
    data = load_data(micro_config(data=f"cifar10:{cifar10_archive}", image_size=None))
    assert (data.image_size, data.channels, data.num_classes) == (32, 3, 10)
    assert len(data.train_y) + len(data.val_y) == 100 and data.classes[0] == "airplane"
    import tarfile
    with tarfile.open(cifar10_archive) as tar:
        tar.extractall(tmp_path, filter="data")
    again = load_data(micro_config(data=f"cifar10:{tmp_path / 'cifar-10-batches-py'}", image_size=None))
    assert torch.equal(again.train_x, data.train_x)
    import pickle  # class names pickled as str (a batch re-saved by Python 3) are read as they are
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps({b"label_names": ["a"] * 10}))
    assert load_data(micro_config(data=f"cifar10:{tmp_path / 'cifar-10-batches-py'}")).classes == ["a"] * 10


def test_cifar_refuses_pickled_code(tmp_path):
    import pickle
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"]}))
    for b in range(1, 6):
        (folder / f"data_batch_{b}").write_bytes(pickle.dumps(np.random.RandomState))  # a global, not data
    with pytest.raises(DataError, match="not allowed in a CIFAR batch"):
        load_data(micro_config(data=f"cifar10:{folder}"))


@pytest.mark.parametrize("spec, message", [
    ("fashion_mnist:/nonexistent/fm", "apt-get install dataset-fashion-mnist"),
    ("imagefolder:/nonexistent/images", "does not exist"),
    ("cifar10:/nonexistent/cifar.tar.gz", "cs.toronto.edu"),
])
def test_missing_data_says_how_to_get_it(spec, message):
    with pytest.raises(DataError, match=message):
        load_data(micro_config(data=spec))


def test_non_image_file_in_image_folder(image_folder, tmp_path):
    import shutil
    root = tmp_path / "mixed"
    shutil.copytree(image_folder, root)
    (root / "class_0" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="notes.txt.*is not an image"):
        load_data(micro_config(data=f"imagefolder:{root}"))
    (root / "class_0" / "notes.txt").unlink()
    # what file browsers leave behind is skipped, as hidden files are (Thumbs.db stopped the load)
    for name in (".DS_Store", "Thumbs.db", "desktop.ini"):
        (root / "class_1" / name).write_bytes(b"\x00metadata")
    assert len(load_data(micro_config(data=f"imagefolder:{root}", val_fraction=0.2)).train_y) == 96
    (root / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        load_data(micro_config(data=f"imagefolder:{root}"))


def test_a_class_folders_sub_folders_are_read_as_torchvisions_imagefolder_reads_them(image_folder, tmp_path):
    """`cat/indoor/*.jpg` belongs to class cat (its images were skipped without a word); a link back up the
    tree is read once; a folder split into train/ and val/ is refused, naming the folder to give."""
    import os
    import shutil

    from torchvision.datasets import ImageFolder
    root = tmp_path / "nested"
    shutil.copytree(image_folder, root)
    for i, path in enumerate(sorted((root / "class_3").iterdir())):
        (root / "class_3" / ("indoor" if i % 2 else "outdoor")).mkdir(exist_ok=True)
        path.rename(root / "class_3" / ("indoor" if i % 2 else "outdoor") / path.name)
    os.symlink("..", root / "class_4" / "loop")  # would list every class again, and again
    data = load_data(micro_config(data=f"imagefolder:{root}", image_size=None, val_fraction=0.25))
    reference = ImageFolder(str(image_folder))
    assert data.classes == reference.classes and len(data.train_y) + len(data.val_y) == len(reference) == 120
    assert int((torch.cat([data.train_y, data.val_y]) == 3).sum()) == reference.targets.count(3) > 0
    split = tmp_path / "split"
    shutil.copytree(image_folder, split / "train")
    shutil.copytree(image_folder, split / "val")
    with pytest.raises(DataError, match=f"holds split folders \\(train, val\\) .* use imagefolder:{split / 'train'} "):
        load_data(micro_config(data=f"imagefolder:{split}"))
    assert load_data(micro_config(data=f"imagefolder:{split / 'train'}")).num_classes == 10


def test_16_bit_and_float_grayscale_images_are_scaled_to_8_bits_not_clipped(tmp_path):
    """16-bit PNGs (microscopy, medical scans) read as their 8-bit copies: Pillow's conversion clipped every
    value above 255 of 65535 to white, so most images were blank. Float TIFFs of values in 0..1 read as their
    8-bit copies too (Pillow made them 0 and 1 of 255: black), and float ones in 0..255 as they are, as are
    32-bit integer ones holding 8-bit values (they were taken as 16-bit: 0 and 1 of 255). Grayscale
    with an alpha channel (LA), and a palette of grays (P), is grayscale: each was read as 3 equal channels."""
    from conftest import digit_images
    from PIL import Image

    images, labels = digit_images(40, 16)
    kinds = {"8": (lambda img: img, "png"), "16": (lambda img: img.astype(np.uint16) * 257, "png"),
             "float01": (lambda img: img.astype(np.float32) / 255, "tif"),
             "float255": (lambda img: img.astype(np.float32), "tif"),
             "int32": (lambda img: img.astype(np.int32), "tif"),  # 8-bit values in a 32-bit file: 0 and 1 before
             "gray_alpha": (lambda img: np.stack([img, np.full_like(img, 255)], -1), "png"),  # LA: 3 channels before
             "palette": (lambda img: img, "png")}  # a gray palette (a quantised PNG): 3 channels before
    for kind, (make, suffix) in kinds.items():
        for i, (img, label) in enumerate(zip(images, labels)):
            (tmp_path / kind / str(label)).mkdir(parents=True, exist_ok=True)
            picture = Image.fromarray(make(img))
            picture = picture.convert("P") if kind == "palette" else picture
            picture.save(tmp_path / kind / str(label) / f"{i}.{suffix}")
    assert Image.open(tmp_path / "16" / str(labels[0]) / "0.png").mode.startswith("I")
    assert Image.open(tmp_path / "float01" / str(labels[0]) / "0.tif").mode == "F"
    loaded = {kind: load_data(micro_config(data=f"imagefolder:{tmp_path / kind}", image_size=None)) for kind in kinds}
    eight = loaded["8"]
    assert int(eight.train_x.max()) == 255
    assert Image.open(tmp_path / "gray_alpha" / str(labels[0]) / "0.png").mode == "LA"
    assert Image.open(tmp_path / "int32" / str(labels[0]) / "0.tif").mode == "I"
    assert Image.open(tmp_path / "palette" / str(labels[0]) / "0.png").mode == "P"
    for kind in ("16", "float01", "float255", "int32", "gray_alpha", "palette"):
        assert loaded[kind].channels == 1 and torch.equal(loaded[kind].train_x, eight.train_x), kind


def test_a_streamed_image_folder_trains_exactly_like_the_in_memory_one(image_folder):
    """loader: stream reads the files per batch in 2 worker processes; decoding, order, augmentation
    and so every number of the run are those of the in-memory path."""
    runs = {}
    for loader in ("memory", "stream"):
        cfg = micro_config(data=f"imagefolder:{image_folder}", image_size=16, epochs=3, batch_size=16,
                           aug_strength=1.0, monitors=True, loader=loader, loader_workers=2)
        data = load_data(cfg)
        assert data.streamed == (loader == "stream")
        runs[loader] = [{k: v for k, v in h.items() if k not in ("images_per_s", "epoch_time_s")}
                        for h in train(cfg, data=data, device="cpu")["history"]]
    assert runs["stream"] == runs["memory"]
    assert len(runs["stream"]) == 3 and "cls_norm" in runs["stream"][0]  # monitors read the streamed probe
    assert runs["stream"][0]["train_loss"] != runs["stream"][1]["train_loss"]


def test_auto_streams_a_folder_above_the_memory_threshold(image_folder, monkeypatch):
    import vitsearch.data as data_module

    cfg = micro_config(data=f"imagefolder:{image_folder}", image_size=16)
    assert not load_data(cfg).streamed  # 120 small images
    monkeypatch.setattr(data_module, "STREAM_ABOVE_BYTES", 120 * 3 * 16 * 16 - 1)
    data = load_data(cfg)
    assert data.streamed and data.train_x.shape[1:] == (3, 16, 16)
    assert data.train_x[:4].shape == (4, 3, 16, 16) and data.train_x[:4].dtype == torch.uint8


def test_an_unreadable_file_of_a_streamed_folder_is_a_one_line_error(image_folder, tmp_path, monkeypatch):
    import shutil

    import vitsearch.data as data_module

    monkeypatch.setattr(data_module, "SAMPLE", 4)  # the bad file is first met by a loader worker

    root = tmp_path / "folder"
    shutil.copytree(image_folder, root)
    victim = sorted((root / "class_3").iterdir())[-1]
    victim.write_bytes(b"not an image")
    cfg = micro_config(data=f"imagefolder:{root}", image_size=16, epochs=1, batch_size=8, loader="stream",
                       loader_workers=1)
    with pytest.raises(DataError) as err:
        train(cfg, device="cpu")
    message = str(err.value)
    assert "\n" not in message and str(victim) in message and "cannot read image" in message
