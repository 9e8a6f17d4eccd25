"""`feddf cache import` sources: real Fashion-MNIST, and CIFAR-10/100, STL-10, ImageNet32 fixtures written in the exact
on-disk formats their loaders read (tiny, in tmp dirs), image folders and npz files."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from feddf.data.importers import import_source
from feddf.cache.reader import open_cache
from feddf.cache.stream import CacheStream
from feddf.cache.verify import verify_cache
from feddf.errors import FeddfError


def read_all(path) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        n = int(f["committed"][()])
        return f["images"][:n], f["labels"][:n]


def check_sound(path, n, c, r):
    info = open_cache(path)
    assert (info.n, info.channels, info.resolution, info.kind, info.complete) == (n, c, r, "imported", True)
    rep = verify_cache(path)
    assert rep.ok, rep.problems
    return info


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("FEDDF_DATA_ROOT", str(root))
    return root


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision checks the md5 of the official archives' files, which a fixture cannot match; only that check is
    replaced (by "the file exists"): parsing stays torchvision's own."""
    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.stl10 as tv_stl

    for mod in (tv_cifar, tv_stl):
        monkeypatch.setattr(mod, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def test_fashion_mnist_real(fmnist_available, tmp_path):
    from feddf.data import get_dataset

    out = import_source("fashion-mnist:test[:500]", tmp_path / "f.h5", progress=False)
    info = check_sound(out, 500, 1, 28)
    ref = get_dataset("fashion-mnist:test[:500]")
    x, y = read_all(out)
    assert np.array_equal(x, ref.images.numpy()) and np.array_equal(y, ref.labels.numpy())
    assert np.array_equal(info.label_counts, np.bincount(y, minlength=10))
    assert info.label_names[0] == "T-shirt/top" and info.attrs["source"] == "fashion-mnist:test[:500]"
    assert info.attrs["config"]["source"] == "fashion-mnist:test[:500]" and "versions" in info.attrs
    # a stream over it delivers uint8 batches of the right shape
    xb, yb = next(iter(CacheStream(out, 64, channels=1, resolution=28)))
    assert xb.shape == (64, 1, 28, 28) and xb.dtype == torch.uint8


def test_split_option_resolution_and_limit(fmnist_available, tmp_path):
    from feddf.cache.augment import resize
    from feddf.data import get_dataset

    out = import_source("fashion-mnist", tmp_path / "f32.h5", split="test", resolution=32, limit=300,
                        progress=False)
    check_sound(out, 300, 1, 32)
    x, _ = read_all(out)
    assert np.array_equal(x, resize(get_dataset("fashion-mnist:test[:300]").images, 32).numpy())
    with pytest.raises(FeddfError, match="split"):
        import_source("fashion-mnist:train", tmp_path / "g.h5", split="test", progress=False)


def test_reimport_is_a_no_op_and_a_different_config_is_refused(fmnist_available, tmp_path):
    out = tmp_path / "f.h5"
    import_source("fashion-mnist:test[:100]", out, progress=False)
    before = out.read_bytes()
    import_source("fashion-mnist:test[:100]", out, progress=False)  # complete already: nothing rewritten
    assert out.read_bytes() == before
    with pytest.raises(FeddfError, match="different config"):
        import_source("fashion-mnist:test[:200]", out, progress=False)
    assert out.read_bytes() == before  # never destroyed on bad input
    import_source("fashion-mnist:test[:200]", out, force=True, progress=False)
    assert open_cache(out).n == 200


def _cifar_batch(path, n, key, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)  # rows: R plane, G plane, B plane of 32x32
    labels = rng.integers(0, 10 if key == "labels" else 100, n).tolist()
    with open(path, "wb") as f:
        pickle.dump({"data": data, key: labels}, f)
    return data.reshape(n, 3, 32, 32), np.array(labels)


def test_cifar10_fixture(data_root, no_md5, tmp_path):
    base = data_root / "cifar10" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    parts = [_cifar_batch(base / f"data_batch_{i}", 20, "labels", i) for i in range(1, 6)]
    _cifar_batch(base / "test_batch", 10, "labels", 9)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    out = import_source("cifar10", tmp_path / "c10.h5", progress=False)
    check_sound(out, 100, 3, 32)
    x, y = read_all(out)
    assert np.array_equal(x, np.concatenate([p[0] for p in parts]))
    assert np.array_equal(y, np.concatenate([p[1] for p in parts]))


def test_cifar100_fixture(data_root, no_md5, tmp_path):
    base = data_root / "cifar100" / "cifar-100-python"
    base.mkdir(parents=True)
    _cifar_batch(base / "train", 30, "fine_labels", 1)
    tx, ty = _cifar_batch(base / "test", 25, "fine_labels", 2)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)]}, f)
    out = import_source("cifar100:test", tmp_path / "c100.h5", progress=False)
    info = check_sound(out, 25, 3, 32)
    x, y = read_all(out)
    assert np.array_equal(x, tx) and np.array_equal(y, ty) and info.label_counts.shape == (100,)


def test_stl10_train_plus_unlabeled_fixture(data_root, no_md5, tmp_path):
    base = data_root / "stl10" / "stl10_binary"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    want = {}
    for split, n in (("train", 4), ("unlabeled", 3), ("test", 2)):
        imgs = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        imgs.transpose(0, 1, 3, 2).tofile(base / f"{split}_X.bin")  # STL-10 binaries are column-major
        want[split] = imgs
        if split != "unlabeled":
            labels = rng.integers(1, 11, n).astype(np.uint8)  # 1..10 on disk
            labels.tofile(base / f"{split}_y.bin")
            want[split + "_y"] = labels.astype(np.int64) - 1
    (base / "class_names.txt").write_text("\n".join(f"s{i}" for i in range(10)))
    out = import_source("stl10", tmp_path / "stl.h5", split="train+unlabeled", resolution=32, progress=False)
    info = check_sound(out, 7, 3, 32)
    x, y = read_all(out)
    assert np.array_equal(y, np.concatenate([want["train_y"], [-1, -1, -1]]))
    assert info.label_counts.sum() == 4  # unlabelled images (-1) are stored but not counted
    from feddf.cache.augment import resize

    assert np.array_equal(x, resize(torch.from_numpy(np.concatenate([want["train"], want["unlabeled"]])), 32).numpy())


def test_imagenet32_fixture(data_root, tmp_path):
    folder = data_root / "imagenet32" / "Imagenet32_val_npz"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (40, 3072), dtype=np.uint8)
    labels = rng.integers(1, 1001, 40)  # 1..1000 on disk
    np.savez(folder / "val_data.npz", data=data, labels=labels)
    out = import_source("imagenet32:val", tmp_path / "in32.h5", limit=30, progress=False)
    info = check_sound(out, 30, 3, 32)
    x, y = read_all(out)
    assert np.array_equal(x, data[:30].reshape(30, 3, 32, 32)) and np.array_equal(y, labels[:30] - 1)
    assert info.label_counts.shape == (1000,)


def _png(path, arr):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_image_folder_with_classes(tmp_path):
    rng = np.random.default_rng(0)
    want = []
    for k, name in enumerate(["cat", "dog"]):
        for i in range(3):
            a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            _png(tmp_path / "imgs" / name / f"{i}.png", a)
            want.append((a.transpose(2, 0, 1), k))
    out = import_source(f"folder:{tmp_path / 'imgs'}", tmp_path / "f.h5", progress=False)
    info = check_sound(out, 6, 3, 16)
    x, y = read_all(out)
    assert np.array_equal(x, np.stack([w[0] for w in want])) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert info.label_names == ["cat", "dog"]


def test_flat_grey_folder_of_mixed_sizes_needs_resolution(tmp_path):
    rng = np.random.default_rng(1)
    _png(tmp_path / "flat" / "a.png", rng.integers(0, 256, (20, 30), dtype=np.uint8))
    _png(tmp_path / "flat" / "b.png", rng.integers(0, 256, (24, 24), dtype=np.uint8))
    with pytest.raises(FeddfError, match="--resolution"):
        import_source(f"folder:{tmp_path / 'flat'}", tmp_path / "g.h5", progress=False)
    assert not (tmp_path / "g.h5").exists()
    out = import_source(f"folder:{tmp_path / 'flat'}", tmp_path / "g.h5", resolution=12, progress=False)
    check_sound(out, 2, 1, 12)
    _, y = read_all(out)
    assert y.tolist() == [-1, -1]


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "float01"])
def test_npz(tmp_path, layout):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (12, 3, 10, 10), dtype=np.uint8)
    y = rng.integers(0, 4, 12)
    arr = {"nhwc": x.transpose(0, 2, 3, 1), "nchw": x, "float01": x.astype(np.float32) / 255}[layout]
    np.savez(tmp_path / "d.npz", images=arr, labels=y, class_names=np.array(["a", "b", "c", "d"]))
    out = import_source(f"npz:{tmp_path / 'd.npz'}", tmp_path / "n.h5", progress=False)
    info = check_sound(out, 12, 3, 10)
    xs, ys = read_all(out)
    assert np.array_equal(xs, x) and np.array_equal(ys, y) and info.label_names == ["a", "b", "c", "d"]


def test_npz_without_labels_and_bad_npz(tmp_path):
    np.savez(tmp_path / "u.npz", x=np.zeros((5, 8, 8), np.uint8))
    out = import_source(f"npz:{tmp_path / 'u.npz'}", tmp_path / "u.h5", progress=False)
    check_sound(out, 5, 1, 8)
    np.savez(tmp_path / "bad.npz", pixels=np.zeros((5, 8, 8), np.uint8))
    with pytest.raises(FeddfError, match="no 'x' or 'images'"):
        import_source(f"npz:{tmp_path / 'bad.npz'}", tmp_path / "b.h5", progress=False)
    np.savez(tmp_path / "big.npz", x=np.full((5, 8, 8), 300, np.int32))
    with pytest.raises(FeddfError, match="0..255"):
        import_source(f"npz:{tmp_path / 'big.npz'}", tmp_path / "b.h5", progress=False)


@pytest.mark.parametrize("source, match", [
    ("mnist", "unknown import source"),
    ("noise", "generated on the fly"),
    ("folder:/nonexistent/dir", "no such folder"),
    ("npz:/nonexistent.npz", "no such file"),
    ("fashion-mnist:test[5:2]", "empty or out of range"),
])
def test_bad_sources_are_refused(tmp_path, source, match):
    with pytest.raises(FeddfError, match=match) as e:
        import_source(source, tmp_path / "x.h5", progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x.h5").exists()


def test_split_option_takes_a_slice(tmp_path, fmnist_available):
    from feddf.data.importers import import_source
    from feddf.cache.reader import open_cache
    from feddf.data import get_dataset
    from feddf.errors import FeddfError

    out = import_source("fashion-mnist", tmp_path / "pub.h5", split="test[:300]")
    info = open_cache(out)
    assert info.n == 300
    import h5py

    with h5py.File(out, "r") as f:
        assert (f["labels"][:] == get_dataset("fashion-mnist:test[:300]").labels.numpy()).all()
    with pytest.raises(FeddfError, match="give it once"):
        import_source("fashion-mnist:train", tmp_path / "x.h5", split="test[:300]")
