"""Data loaders read local files only."""

import gzip
import math
import struct

import pytest
import torch

from pyro_amortized.datasets import load_chick_weights, load_fashion_mnist, load_radon


def _write_idx(path, array, compress):
    header = struct.pack(">HBB", 0, 0x08, array.dim()) + struct.pack(
        f">{array.dim()}I", *array.shape
    )
    data = header + bytes(array.flatten().tolist())
    (gzip.open if compress else open)(path, "wb").write(data)


def test_fashion_mnist_reads_idx_files(tmp_path):
    pixels = torch.tensor([[[0, 255], [200, 10]], [[128, 127], [255, 0]]], dtype=torch.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", pixels, compress=True)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", torch.tensor([3, 9], dtype=torch.uint8), False)
    images, labels = load_fashion_mnist("test", root=tmp_path)
    assert images.tolist() == [[0, 1, 1, 0], [1, 0, 1, 0]]
    assert labels.tolist() == [3, 9]


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt install dataset-fashion-mnist"):
        load_fashion_mnist(root=tmp_path)
    with pytest.raises(ValueError, match="split must be"):
        load_fashion_mnist("validation", root=tmp_path)


def test_radon_ships_with_the_package():
    data = load_radon()
    assert {key: value.shape for key, value in data.items()} == {
        "county": (919,),
        "floor": (919,),
        "log_radon": (919,),
    }
    assert data["county"].dtype == torch.int64 and data["county"].unique().numel() == 85
    assert set(data["floor"].unique().tolist()) == {0.0, 1.0}


def test_chick_weights_ship_with_the_package():
    data = load_chick_weights()
    assert {key: value.shape for key, value in data.items()} == {
        "log_weight": (50, 12),
        "mask": (50, 12),
        "diet": (50,),
    }
    weighings = data["mask"].sum(1)
    assert weighings.sum() == 578 and (weighings == 12).sum() == 45
    assert torch.equal(data["mask"], torch.arange(12) < weighings[:, None])  # a prefix each
    assert torch.all(data["log_weight"][~data["mask"]] == 0)
    assert data["diet"].bincount().tolist() == [20, 10, 10, 10]
    assert data["log_weight"][0, 0] == pytest.approx(math.log(42))  # chick 1 hatched at 42 g
