"""Hugging Face datasets as task and transfer data (`hf:PATH`, built offline by the test) and Flower Datasets'
partitioners (`--partition flwr:...`), end to end through `feddf train` and `feddf cache import`."""
import json

import numpy as np
import pytest

from tests.conftest import run_cli

datasets = pytest.importorskip("datasets")
pytest.importorskip("flwr_datasets")

ENV = {"HF_DATASETS_OFFLINE": "1"}
TINY = ["--arch", "cnn", "--aggregator", "fedavg", "--clients", "2", "--fraction", "1", "--rounds", "1",
        "--local-epochs", "1", "--eval-batch-size", "50", "--quiet"]


def images(n, seed):
    """n 28x28 grey images whose brightness follows the label (learnable in one epoch), labels 0..3."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = np.clip(rng.normal(40 + 50 * y[:, None, None], 20, (n, 28, 28)), 0, 255).astype(np.uint8)
    return x, y


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A DatasetDict (train 160, test 40) with an Image and a ClassLabel column, saved with save_to_disk."""
    from PIL import Image

    feats = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(names=["a", "b", "c", "d"])})
    parts = {}
    for split, n, seed in (("train", 160, 0), ("test", 40, 1)):
        x, y = images(n, seed)
        parts[split] = datasets.Dataset.from_dict({"img": [Image.fromarray(a) for a in x], "fine": y.tolist()},
                                                  features=feats)
    path = tmp_path_factory.mktemp("hf") / "tiny"
    datasets.DatasetDict(parts).save_to_disk(str(path))
    return path


def test_a_saved_dataset_trains_with_a_flower_partitioner(tmp_path, saved):
    out = tmp_path / "run"
    run_cli("train", "--dataset", f"hf:{saved}", "--partition", "flwr:dirichlet", "--alpha", "1.0", *TINY,
            "--out", str(out), check=True, env=ENV)
    row = json.loads((out / "metrics.jsonl").read_text())
    assert 0 <= row["acc"]["cnn"]["fedavg"] <= 1
    part = json.loads((out / "partition.json").read_text())
    assert part["partition"] == "flwr:dirichlet"
    assert sum(c["n"] for c in part["clients"]) + part["server_val"]["n"] == part["n_train"] == 160
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dataset_info"]["class_names"] == ["a", "b", "c", "d"] and cfg["num_classes"] == 4


@pytest.mark.parametrize("kind", ["dirichlet", "pathological", "shard", "iid"])
def test_every_flower_partitioner_gives_each_sample_to_at_most_one_client(kind):
    from feddf.federated.partition import partition

    y = np.repeat(np.arange(10), 30)
    parts = partition(f"flwr:{kind}", y, 5, 1.0, seed=3)
    held = np.concatenate(parts).tolist()
    assert len(held) == len(set(held)) and all(len(p) for p in parts)
    if kind in ("dirichlet", "iid"):
        assert sorted(held) == list(range(300))
    if kind == "pathological":
        assert all(len(set(y[p])) <= 2 for p in parts)
    again = partition(f"flwr:{kind}", y, 5, 1.0, seed=3)
    assert all((a == b).all() for a, b in zip(parts, again))


def test_local_files_with_named_columns_and_an_hf_transfer_set(tmp_path, saved):
    x, y = images(200, 2)
    table = tmp_path / "tiny.parquet"
    datasets.Dataset.from_dict({"pixels": x.tolist(), "target": y.tolist()}).to_parquet(str(table))
    p = run_cli("train", "--dataset", f"hf:{table}", *TINY, "--out", str(tmp_path / "bad"), env=ENV)
    assert p.returncode == 1 and "no image column found among pixels, target" in p.stderr
    assert not (tmp_path / "bad").exists()
    p = run_cli("train", "--dataset", f"hf:{table}", "--image-column", "pixels", "--label-column", "nope", *TINY,
                "--out", str(tmp_path / "bad"), env=ENV)
    assert p.returncode == 1 and "--label-column nope" in p.stderr and not (tmp_path / "bad").exists()

    out = tmp_path / "run"
    args = [a for a in TINY if a not in ("fedavg",)]
    args[args.index("--aggregator") + 1:args.index("--aggregator") + 1] = ["feddf"]
    run_cli("train", "--dataset", f"hf:{table}", "--image-column", "pixels", "--label-column", "target", *args,
            "--distill-source", f"hf:{saved}:test", "--cache-dir", str(tmp_path / "cache"), "--distill-steps", "2",
            "--eval-every", "1", "--out", str(out), check=True, env=ENV)
    cfg = json.loads((out / "config.json").read_text())
    src = cfg["hashes"]["source"]
    assert cfg["image_column"] == "pixels" and src["n"] == 40 and src["cache_source"].startswith("hf:")

    cache = tmp_path / "imported.h5"
    run_cli("cache", "import", f"hf:{saved}", "--split", "test", "--out", str(cache), "--quiet", check=True, env=ENV)
    from feddf.cache.reader import open_cache

    info = open_cache(cache)
    assert info.n == 40 and list(info.label_names) == ["a", "b", "c", "d"]


def test_an_unknown_partition_is_one_line(tmp_path):
    p = run_cli("train", "--partition", "flwr:bogus", *TINY, "--out", str(tmp_path / "r"))
    assert p.returncode == 1 and "--partition 'flwr:bogus'" in p.stderr and "flwr:shard" in p.stderr
    assert not (tmp_path / "r").exists()


def test_help():
    p = run_cli("train", "--help", check=True)
    for flag in ("--image-column", "--label-column", "flwr:dirichlet", "hf:PATH"):
        assert flag in p.stdout
