"""Small bundled data sets for examples, tests and benchmarks.

The digits are scikit-learn's 8x8 handwritten digits (1797 images), which ship
inside scikit-learn: nothing is downloaded. scikit-learn is needed only here
(it is part of the ``test`` and ``demo`` extras).
"""

from __future__ import annotations

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
