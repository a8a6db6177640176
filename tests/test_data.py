import pytest
import torch

from diffusion_core.config import DataConfig
from diffusion_core.data import BatchOrder, DatasetError, load_images, to_uint8, to_unit_range
from helpers import MNIST_ROOT, require


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
