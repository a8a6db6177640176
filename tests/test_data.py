import numpy as np
import pytest
import torch
from helpers import MNIST_ROOT, require

from diffusion_core.config import DataConfig
from diffusion_core.data import BatchOrder, DatasetError, load_images, to_uint8, to_unit_range


def test_digits_offline_in_unit_range_with_labels():
    data = load_images(DataConfig(dataset="digits"))
    assert data.images.shape[1:] == (1, 8, 8) and data.images.dtype == torch.uint8
    assert len(data) == len(data.labels) and set(data.labels.tolist()) == set(range(10))
    x = to_unit_range(data.images)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    test = load_images(DataConfig(dataset="digits"), train=False)
    assert len(data) + len(test) == 1797


def test_mnist_from_shared_copy_with_subset_and_resize():
    require(MNIST_ROOT / "MNIST" / "raw", "offline MNIST")
    cfg = DataConfig(dataset="mnist", root=str(MNIST_ROOT), download=False, subset=300, image_size=16)
    data = load_images(cfg)
    assert data.images.shape == (300, 1, 16, 16) and data.labels.shape == (300,)
    again = load_images(cfg)
    assert torch.equal(data.images, again.images), "the subset must be seeded"
    full = load_images(DataConfig(dataset="mnist", root=str(MNIST_ROOT), download=False), train=False)
    assert full.images.shape == (10000, 1, 28, 28)


@pytest.mark.parametrize("dataset", ["cifar10", "mnist", "stl10"])
def test_missing_dataset_with_download_off_names_the_path(tmp_path, dataset):
    with pytest.raises(DatasetError, match=f"{dataset!r} not found under {tmp_path}.*data.download: true"):
        load_images(DataConfig(dataset=dataset, root=str(tmp_path), download=False))


def test_uint8_round_trip():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    assert torch.equal(to_uint8(to_unit_range(x)), x)


def test_batch_order_is_a_function_of_seed_and_step_and_covers_each_epoch():
    order = BatchOrder(num_items=10, batch_size=4, seed=3)
    epoch0 = torch.cat([order.indices(0), order.indices(1), order.indices(2)[:2]])
    assert sorted(epoch0.tolist()) == list(range(10))
    fresh = BatchOrder(num_items=10, batch_size=4, seed=3)
    assert torch.equal(fresh.indices(7), order.indices(7)) and torch.equal(fresh.indices(2), order.indices(2))
    assert not torch.equal(BatchOrder(10, 4, seed=4).indices(0), order.indices(0))


def _fake_stl10(root, count: int = 6):
    """STL-10's binary layout (column-major 3x96x96 uint8, labels 1..10) for ``count`` images whose
    top half has colour (i, 2i, 3i)·10 and bottom half is black."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    images = np.zeros((count, 3, 96, 96), dtype=np.uint8)
    for i in range(count):
        images[i, :, :48, :] = np.array([10 * i, 20 * i, 30 * i], dtype=np.uint8)[:, None, None]
    np.transpose(images, (0, 1, 3, 2)).tofile(folder / "train_X.bin")
    (np.arange(count, dtype=np.uint8) % 10 + 1).tofile(folder / "train_y.bin")
    return images


def test_stl10_through_torchvision_downsampled_to_32_as_seed_004(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets.STL10, "_check_integrity", lambda self: True)  # md5 of the real archive
    images = _fake_stl10(tmp_path)
    native = load_images(DataConfig(dataset="stl10", root=str(tmp_path), download=False))
    assert native.images.shape == (6, 3, 96, 96) and torch.equal(native.images, torch.from_numpy(images))
    small = load_images(DataConfig(dataset="stl10", root=str(tmp_path), download=False, image_size=32))
    assert small.images.shape == (6, 3, 32, 32) and small.images.dtype == torch.uint8
    assert small.labels.tolist() == [0, 1, 2, 3, 4, 5]
    for i in range(6):
        top, bottom = small.images[i, :, :15], small.images[i, :, 17:]
        assert top.flatten(1).unique(dim=1).flatten().tolist() == [10 * i, 20 * i, 30 * i]
        assert int(bottom.max()) == 0
