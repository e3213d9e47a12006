"""Dataset registry: dataset spec string -> `ImageData` (uint8 image tensors in memory + labels).

Specs (the `data` config key):

| spec | source |
|---|---|
| `digits` | scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), always available |
| `fashion_mnist[:PATH]` | Fashion-MNIST IDX files (`*-idx3-ubyte[.gz]`), default /usr/share/datasets/fashion-mnist |
| `imagefolder:PATH` | a folder of class sub-folders of images (any format Pillow reads), in memory or streamed |
| `cifar10:PATH`, `cifar100:PATH` | the Python-format archive (`.tar.gz`) or its extracted folder |

Train/validation split: the training files are shuffled with a generator seeded by `seed` and the
last `val_fraction` becomes validation (test files of Fashion-MNIST/CIFAR are not used, so that
they stay untouched by a search). The model's image size, channels and classes come from the data.
Images stay uint8 (N, C, H, W) so that augmentation sees real pixel values; normalisation happens
per batch in the trainer.

Image folders too large for memory are streamed (`loader: auto` decides from the decoded size, see
`STREAM_ABOVE_BYTES`; `loader: stream` forces it): the images stay files (`StreamedImages`), and the
trainer reads each batch through a `torch.utils.data.DataLoader` with `loader_workers` processes that
decode, resize and centre-crop exactly as the in-memory path does, into pinned memory on a GPU machine.
Augmentation then runs on the device as for in-memory data.

CIFAR's format is a Python pickle: it is read with a restricted unpickler that only admits the NumPy
array types the format needs.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import TrainConfig, folder_image_size
from .errors import DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle-boot"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _stream_threshold() -> int:
    """Decoded bytes above which `loader: auto` streams an image folder: a quarter of the machine's
    memory (every trial of a search on that machine may hold its own copy), at most 8 GiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 << 30
    return min(8 << 30, total // 4)


STREAM_ABOVE_BYTES = _stream_threshold()


class StreamedImages:
    """The images of an image folder kept as files: (N, C, size, size) uint8 when read. Indexing
    (an int tensor, a list or a slice) reads those images now; the trainer reads batches through
    `loader`, in worker processes."""

    dtype = torch.uint8

    def __init__(self, paths: list[Path], gray: bool, size: int):
        self.paths, self.gray, self.size = list(paths), gray, size

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), 1 if self.gray else 3, self.size, self.size)

    def take(self, index: torch.Tensor) -> StreamedImages:
        return StreamedImages([self.paths[i] for i in index.tolist()], self.gray, self.size)

    def read(self, i: int) -> torch.Tensor:
        return _read_image(self.paths[i], self.gray, self.size)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            index = range(*index.indices(len(self.paths)))
        elif isinstance(index, torch.Tensor):
            index = index.tolist()
        return torch.stack([self.read(i) for i in index])

    def loader(self, batches, workers: int, pin_memory: bool):
        """A DataLoader yielding uint8 image batches for the index lists `batches` gives, in order.
        `batches` is read in the main process each epoch, so a caller may change its order between
        epochs while the workers stay alive."""
        from torch.utils.data import DataLoader

        return DataLoader(_Files(self), batch_sampler=batches, num_workers=workers, pin_memory=pin_memory,
                          persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                          generator=torch.Generator())  # draws nothing from the seeded global stream


class _Files(torch.utils.data.Dataset):
    def __init__(self, images: StreamedImages):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images.read(i)


FINGERPRINT_BYTES = 64 << 20  # the most image bytes `ImageData.fingerprint` hashes


@dataclass
class ImageData:
    """A loaded, split dataset: uint8 images (N, C, H, W) and int64 labels. The images of a streamed
    image folder are `StreamedImages` (files read per batch); the labels are always in memory."""

    name: str
    train_x: torch.Tensor | StreamedImages
    train_y: torch.Tensor
    val_x: torch.Tensor | StreamedImages
    val_y: torch.Tensor
    classes: list[str]

    @property
    def streamed(self) -> bool:
        return isinstance(self.train_x, StreamedImages)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def fingerprint(self) -> str:
        """The split's sizes and a hash of its labels and images in order (a streamed folder's: its file
        paths; of large in-memory data every k-th image, <= FINGERPRINT_BYTES in all): a search or run
        resumed on data that changed since (images added to a folder, another file) is refused, since its
        split would differ from the one it trained on. Computed once per object (a search's driver hashes
        the data it shares with the trials)."""
        if self.__dict__.get("_fingerprint") is None:
            import hashlib

            digest = hashlib.blake2b(digest_size=8)
            for images, labels in ((self.train_x, self.train_y), (self.val_x, self.val_y)):
                digest.update(memoryview(labels.cpu().contiguous().numpy()))
                if isinstance(images, StreamedImages):
                    digest.update("\n".join(map(str, images.paths)).encode())
                elif len(images):
                    every = -(-images.numel() // FINGERPRINT_BYTES)
                    digest.update(memoryview(images[::every].cpu().contiguous().numpy()).cast("B"))
            self._fingerprint = f"{len(self.train_y)} train / {len(self.val_y)} val images, hash {digest.hexdigest()}"
        return self._fingerprint


def load_data(cfg: TrainConfig) -> ImageData:
    """Load `cfg.data`, resize to `cfg.image_size` if set, subset and split from `cfg.seed`."""
    scheme, path = cfg.data_scheme, cfg.data_path
    path = str(Path(path).expanduser()) if path else path
    if scheme == "digits":
        images, labels, classes = _digits()
    elif scheme == "fashion_mnist":
        images, labels, classes = _fashion_mnist(Path(path or FASHION_MNIST_DIR))
    elif scheme == "imagefolder":
        images, labels, classes = _image_folder(Path(path), cfg.image_size, cfg.loader,
                                                cfg.patch_size if cfg.is_vit else None)
    else:
        images, labels, classes = _cifar(Path(path), 100 if scheme == "cifar100" else 10)
    _check_labels(cfg.data, labels, classes)
    if cfg.image_size is not None and images.shape[-1] != cfg.image_size and isinstance(images, torch.Tensor):
        images = resize(images, cfg.image_size)
    return split(cfg.data, images, labels, classes, cfg.seed, cfg.val_fraction, cfg.data_subset)


def _check_labels(name: str, labels: torch.Tensor, classes: list[str]) -> None:
    """Every label must name one of the classes: one outside them fails only in the first training step."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
        wrong = labels[(labels < 0) | (labels >= len(classes))]
        raise DataError(f"dataset {name!r} has {len(wrong)} label{'s' * (len(wrong) > 1)} outside "
                        f"0..{len(classes) - 1} "
                        f"(the {len(classes)} class names), e.g. {int(wrong[0])}")


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of uint8 images, done once at load time."""
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                        antialias=size < images.shape[-1])
    return out.round().clamp(0, 255).to(torch.uint8)


def split(name: str, images: torch.Tensor, labels: torch.Tensor, classes: list[str], seed: int,
          val_fraction: float, subset: int | None) -> ImageData:
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(len(order) * val_fraction))
    train_idx, val_idx = order[:-n_val], order[-n_val:]
    if subset is not None:
        train_idx = train_idx[:subset]
    if len(train_idx) < 2:
        raise DataError(f"dataset {name!r} leaves {len(train_idx)} training images after the split; need >= 2")
    if isinstance(images, StreamedImages):
        return ImageData(name, images.take(train_idx), labels[train_idx].contiguous(), images.take(val_idx),
                         labels[val_idx].contiguous(), classes)
    return ImageData(name, images[train_idx].contiguous(), labels[train_idx].contiguous(),
                     images[val_idx].contiguous(), labels[val_idx].contiguous(), classes)


def untrained_note(data: ImageData) -> str | None:
    """A line where the (random, unstratified) split leaves a class without training images: no run can learn
    it, and validation counts its images as errors (a folder of 1 + 8 images said nothing)."""
    counts = torch.bincount(torch.as_tensor(data.train_y), minlength=data.num_classes)
    missing = [data.classes[i] for i in range(data.num_classes) if counts[i] == 0]
    if not missing:
        return None
    shown = ", ".join(repr(c) for c in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    verb = "has" if len(missing) == 1 else "have"
    return (f"note: {len(missing)} of {data.num_classes} classes ({shown}) {verb} no training image after the split "
            "(seed, val_fraction, data_subset): no run can learn them; add images of them, or lower val_fraction")


def subset_note(data_subset: int | None, data: ImageData) -> str | None:
    """A line where `data_subset` asks for more training images than the split leaves (they are all used; the
    count in the first line was the only sign)."""
    if data_subset is None or data_subset <= len(data.train_y):
        return None
    return (f"note: data_subset {data_subset} is more than the {len(data.train_y)} training images of {data.name!r}: "
            "all of them are used")


def _digits():
    """scikit-learn's bundled digits. Its data file is read as `load_digits` reads it, without
    importing scikit-learn: that import is ~1 s of CPU on the critical path of every search's start."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is not None and path.is_file():
        with gzip.open(path, "rt", encoding="utf-8") as f:
            table = np.loadtxt(f, delimiter=",")
        flat, target = table[:, :-1], table[:, -1].astype(np.int64)
    else:  # another layout of scikit-learn's files: its own loader
        from sklearn.datasets import load_digits

        flat, target = load_digits(return_X_y=True)
    images = torch.from_numpy(flat.reshape(-1, 8, 8)).mul(255.0 / 16.0).round().to(torch.uint8).unsqueeze(1)
    return images, torch.from_numpy(target).long(), [str(i) for i in range(10)]


def _fashion_mnist(folder: Path):
    how = ("install it with `apt-get install dataset-fashion-mnist` (Debian) or download the four "
           "*-ubyte.gz files from github.com/zalandoresearch/fashion-mnist into a folder and use "
           "data: fashion_mnist:FOLDER")
    if folder.is_file():  # (it said "does not exist")
        raise DataError(f"Fashion-MNIST folder {str(folder)!r} is a file; fashion_mnist:PATH takes the folder that "
                        f"holds train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]: "
                        f"fashion_mnist:{folder.parent}")
    if not folder.is_dir():
        raise DataError(f"Fashion-MNIST folder {str(folder)!r} does not exist; {how}")
    images = _read_idx(_find(folder, "train-images-idx3-ubyte", how))
    labels = _read_idx(_find(folder, "train-labels-idx1-ubyte", how))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"Fashion-MNIST files in {str(folder)!r} have mismatched shapes "
                        f"{tuple(images.shape)} and {tuple(labels.shape)}")
    return (torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
            list(FASHION_MNIST_CLASSES))


def _find(folder: Path, stem: str, how: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"Fashion-MNIST file {stem}[.gz] not found in {str(folder)!r}; {how}")


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (LeCun's format: magic, dims, big-endian sizes, uint8 payload)."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        ndim = raw[3]
        shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
        payload = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return payload.reshape(shape)
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(f"cannot read IDX file {str(path)!r}: {exc}") from None


OS_FILES = {"thumbs.db", "desktop.ini", "icon\r"}  # what Windows and macOS leave in folders: skipped, as hidden files


def _image_folder(root: Path, image_size: int | None, loader: str = "memory", patch_size: int | None = None):
    """In memory: every image decoded now (an unreadable file is an error before training). Streamed
    (`loader: stream`, or `auto` when the decoded images would exceed STREAM_ABOVE_BYTES): a sample of
    up to SAMPLE files fixes the size and colour mode; the rest are read per batch while training."""
    if root.is_file():  # (it said "does not exist"): an archive, most often, or one image
        archive = "".join(root.suffixes[-2:]).lower() in (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz") \
            or root.suffix.lower() in (".zip", ".tar", ".tgz")
        raise DataError(f"image folder {str(root)!r} is a file, not a folder; " +
                        ("extract the archive and point imagefolder: at the folder of class folders it holds"
                         if archive else "point imagefolder: at a folder holding one sub-folder of images per class"))
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist; point imagefolder: at a folder "
                        "holding one sub-folder of images per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    _refuse_split_layout(root, classes)
    files = [(f, i) for i, c in enumerate(classes) for f in _class_files(root / c)]
    if len(classes) < 2 or not files:
        raise DataError(f"image folder {str(root)!r} needs >= 2 class sub-folders holding images; "
                        f"found {len(classes)} class folder(s) and {len(files)} file(s)")
    present = {label for _, label in files}
    empty = [c for i, c in enumerate(classes) if i not in present]
    if empty and files:  # a class no image can teach (torchvision's ImageFolder refuses it too)
        raise DataError(f"class folder {str(root / empty[0])!r} holds no images ({len(empty)} of {len(classes)} class "
                        "folders are empty); remove it or add its images")
    for path, _ in files:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{str(path)!r} is not an image (suffix {path.suffix!r}); image folders may "
                            f"only hold {', '.join(sorted(IMAGE_SUFFIXES))} files")
    labels = torch.tensor([i for _, i in files])
    sample = files if loader == "memory" else files[::max(1, len(files) // SAMPLE)]
    pictures = [_open(path) for path, _ in sample]
    gray, size = _mode_and_size(pictures, image_size, patch_size)
    decoded = len(files) * (1 if gray else 3) * size * size
    if loader == "stream" or (loader == "auto" and decoded > STREAM_ABOVE_BYTES):
        return StreamedImages([path for path, _ in files], gray, size), labels, classes
    if len(sample) < len(files):  # in memory after all: size and colour mode from every image, as always
        pictures = [_open(path) for path, _ in files]
        gray, size = _mode_and_size(pictures, image_size, patch_size)
    return torch.stack([_to_tensor(p, gray, size) for p in pictures]), labels, classes


def _visible(name: str) -> bool:
    return not name.startswith(".") and name.lower() not in OS_FILES


def _class_files(folder: Path) -> list[Path]:
    """A class folder's files, its sub-folders' included (as torchvision's ImageFolder reads them: a class
    kept as `cat/indoor/*.jpg` and `cat/outdoor/*.jpg`), hidden ones skipped, in path order."""
    found, seen = [], set()
    for here, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        seen.add(real)
        # a link to a folder read already, or up the tree (a loop), is skipped
        targets = {d: os.path.realpath(os.path.join(here, d)) for d in dirs if _visible(d)}
        dirs[:] = sorted(d for d, t in targets.items() if t not in seen and not (real + os.sep).startswith(t + os.sep))
        found += [Path(here) / n for n in sorted(names) if _visible(n) and (Path(here) / n).is_file()]
    return found


SPLIT_NAMES = {"train", "training", "val", "valid", "validation", "test", "testing", "eval"}


def _refuse_split_layout(root: Path, classes: list[str]) -> None:
    """A folder already split for training (`train/`, `val/`, each holding class folders) read as one image
    folder would train a classifier of "train" against "val": refused, naming the folder to give."""
    splits = [c for c in classes if c.lower() in SPLIT_NAMES]
    nested = [c for c in splits if any(p.is_dir() and _visible(p.name) for p in (root / c).iterdir())]
    if nested:
        train = next((c for c in nested if c.lower() in ("train", "training")), nested[0])
        raise DataError(f"image folder {str(root)!r} holds split folders ({', '.join(splits)}) with class folders "
                        f"in them, not one folder per class; use imagefolder:{root / train} (vitsearch holds out "
                        "val_fraction of it for validation)")


def _mode_and_size(pictures: list, image_size: int | None, patch_size: int | None) -> tuple[bool, int]:
    """Grayscale when every picture is; `image_size`, or the median shorter side fitted to a patch grid
    (`config.folder_image_size`)."""
    gray = all(_is_gray(p) for p in pictures)
    return gray, image_size or folder_image_size(int(np.median([min(p.size) for p in pictures])), patch_size)


def _is_gray(picture) -> bool:
    """A grayscale mode, or a palette (P, PA: a quantised or optimised PNG) whose used colours are all gray: such
    a folder of digits loaded as 3 equal channels."""
    if picture.mode in ("1", "L", "LA", "I", "F") or picture.mode.startswith("I;16"):
        return True
    if picture.mode not in ("P", "PA"):
        return False
    palette, used = picture.getpalette() or [], picture.getcolors(256) or []
    indices = [c[1] if isinstance(c[1], int) else c[1][0] for c in used]
    return bool(indices) and all(len(set(palette[3 * i:3 * i + 3])) == 1 for i in indices)


SAMPLE = 256  # files a streamed folder opens up front for its image size and colour mode


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"cannot read image {str(path)!r}: {exc}; remove or replace the file") from None


def _read_image(path: Path, gray: bool, size: int) -> torch.Tensor:
    return _to_tensor(_open(path), gray, size)


def _to_tensor(picture, gray: bool, size: int) -> torch.Tensor:
    """(C, size, size) uint8: shorter side resized, centre-cropped; in memory and streamed alike."""
    array = np.asarray(_square(_eight_bit(picture).convert("L" if gray else "RGB"), size))
    return torch.from_numpy(array[None].copy() if gray else array.transpose(2, 0, 1).copy())


def _eight_bit(picture):
    """A 16-bit grayscale picture (`I;16`, or `I` as Pillow opens some 16-bit PNGs) scaled to 8 bits, 65535 to
    255: Pillow's own conversion clips at 255, which turned every pixel above 255 of 65535 white; one whose
    values are all within 0..255 (8-bit data in a 16- or 32-bit file) kept as it is. A float one (`F`) of
    values in 0..1 scaled to 0..255."""
    from PIL import Image

    if picture.mode == "I" or picture.mode.startswith("I;16"):
        wide = np.asarray(picture).astype(np.int64)
        if wide.min() >= 0 and wide.max() <= 255:  # 8-bit values in a wider file (an 8-bit image saved as a
            return Image.fromarray(wide.astype(np.uint8), "L")  # 32-bit TIFF): kept (they came out 0 and 1)
        return Image.fromarray(((np.clip(wide, 0, 65535) + 128) // 257).astype(np.uint8), "L")
    if picture.mode == "F":  # 32-bit float (scientific TIFFs): values in 0..1 are scaled to 0..255 (Pillow's
        # conversion made them 0 and 1 of 255: black images); other values are taken as 0..255, clipped
        values = np.nan_to_num(np.asarray(picture, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    return picture


def _square(img, size: int):
    """Resize the shorter side to `size`, then centre-crop to size x size."""
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR batches are pickled dicts of NumPy arrays; refuse every other global."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _cifar(path: Path, num_classes: int):
    names = (["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"], "batches.meta",
             b"label_names", b"labels") if num_classes == 10 else (["train"], "meta", b"fine_label_names",
                                                                    b"fine_labels")
    batch_names, meta_name, class_key, label_key = names
    how = (f"download cifar-{num_classes}-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
           f"and pass the archive or its extracted folder: cifar{num_classes}:PATH")
    members = _cifar_members(path, how)
    try:
        batches = [_unpickle(members[n]) for n in batch_names]
        meta = _unpickle(members[meta_name])
    except KeyError as exc:
        raise DataError(f"CIFAR-{num_classes} file {exc.args[0]} is missing from {str(path)!r}; {how}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"cannot read CIFAR-{num_classes} data in {str(path)!r}: {exc}") from None
    bad = f"CIFAR-{num_classes} data in {str(path)!r} is malformed"
    parts, label_parts = [], []
    for name, batch in zip(batch_names, batches):
        try:
            data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
        except (KeyError, TypeError, IndexError) as exc:
            raise DataError(f"{bad}: {name} is not a dict with keys b'data' and {label_key!r} ({exc!r})") from None
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{bad}: {name}'s data is {data.dtype} {data.shape}, not uint8 (N, 3072) "
                            "(32x32 RGB images, one per row)")
        if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{bad}: {name} has {len(data)} images but labels of shape {labels.shape} "
                            f"({labels.dtype}); it needs one integer label per image")
        parts.append(data)
        label_parts.append(labels.astype(np.int64))
    try:
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[class_key]]
    except (KeyError, TypeError, IndexError, UnicodeDecodeError) as exc:
        raise DataError(f"{bad}: {meta_name} has no list of class names under {class_key!r} ({exc!r})") from None
    data = np.concatenate(parts).reshape(-1, 3, 32, 32)
    return torch.from_numpy(np.ascontiguousarray(data)), torch.from_numpy(np.concatenate(label_parts)), classes


def _cifar_members(path: Path, how: str) -> dict[str, bytes]:
    if path.is_dir():
        inner = next((p for p in path.rglob("batches.meta")), None) or next(path.rglob("meta"), None)
        folder = inner.parent if inner else path
        return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    if path.is_file():
        try:
            with tarfile.open(path) as tar:
                return {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        except (tarfile.TarError, OSError, EOFError) as exc:
            # tarfile's error on a file of another kind lists each compression it tried, one per line
            why = "not a tar archive (plain, gzip, bzip2 or xz)" if isinstance(exc, tarfile.ReadError) else \
                " ".join(str(exc).split())
            raise DataError(f"cannot read CIFAR archive {str(path)!r}: {why}") from None
    raise DataError(f"CIFAR path {str(path)!r} does not exist; {how}")


def _unpickle(raw: bytes):
    return _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
