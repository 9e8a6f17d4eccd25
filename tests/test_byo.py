"""Bring your own model and data, and the Python API: custom factories through train -> audit, heterogeneous runs
mixing zoo and custom models, folder:/npz:/cache: task datasets that reproduce the named set, one-line errors for bad
specs, teacher fallbacks for arbitrary modules, and the docs/api.md example."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from feddf.errors import FeddfError
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
CUSTOM = "tests.custom_models:build"
torch.set_num_threads(1)

TINY = dict(aggregator="feddf", distill_source="noise", clients=4, rounds=1, local_epochs=1, distill_steps=10,
            eval_every=5, progress=False, log=None)


def _one_line(proc, *needles):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("Error: ") and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


# ---------------------------------------------------------------------------------------------------- models
def test_custom_factory_trained_by_the_cli_and_reloaded_by_audit_labeler(fmnist_available, tmp_path):
    run = tmp_path / "run"
    run_cli("train", "--dataset", "fashion-mnist", "--arch", CUSTOM, "--aggregator", "feddf", "--distill-source",
            "noise", "--clients", "4", "--rounds", "1", "--local-epochs", "2", "--train-limit", "400",
            "--test-limit", "200", "--distill-steps", "10", "--eval-every", "5", "--out", str(run), "--quiet",
            check=True, cwd=ROOT)
    cfg = json.loads((run / "config.json").read_text())
    info = cfg["arch_info"][CUSTOM]
    assert info["kind"] == "custom" and info["module"] == "tests.custom_models" and not info["norm_passed"]
    import hashlib

    assert info["sha256"] == hashlib.sha256((ROOT / "tests/custom_models.py").read_bytes()).hexdigest()
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["acc"][CUSTOM]["distilled"] is not None and row["distill_steps"][CUSTOM] > 0
    ckpt = run / "models" / f"{CUSTOM}.pt"
    assert ckpt.is_file()

    from feddf.data.importers import import_source

    cache = import_source("fashion-mnist:test[:200]", tmp_path / "real.h5", progress=False)
    proc = run_cli("audit", str(cache), "--labeler", str(run), "--out", str(tmp_path / "rep"), "--json", "--quiet",
                   check=True, cwd=ROOT)
    rep = json.loads(proc.stdout)
    assert rep["labeler"]["arch"] == CUSTOM
    # the audit's agreement with the labels is the reloaded model's accuracy, computed here independently
    from feddf.data import get_dataset
    from feddf.models import load_classifier

    clf = load_classifier(run)
    assert clf.meta["arch_info"]["sha256"] == info["sha256"]
    assert type(clf.model).__name__ == "TinyNet" and not any("BatchNorm" in type(m).__name__
                                                             for m in clf.model.modules())
    ds = get_dataset("fashion-mnist:test[:200]")
    acc = float((clf.logits(ds.images).argmax(1) == ds.labels).float().mean())
    assert rep["sources"][0]["labeler"]["agreement"]["agreement"] == pytest.approx(acc)


def test_heterogeneous_run_mixes_a_zoo_and_a_custom_model(fmnist_available, tmp_path):
    import feddf

    s = feddf.train(dataset="fashion-mnist", archs=f"cnn,{CUSTOM}", train_limit=300, test_limit=100,
                    out=str(tmp_path / "het"), **TINY)
    acc = s["final"]["acc"]
    assert set(acc) == {"cnn", CUSTOM} and all(a["distilled"] is not None for a in acc.values())
    part = json.loads((tmp_path / "het" / "partition.json").read_text())
    assert [c["arch"] for c in part["clients"]] == ["cnn", "cnn", CUSTOM, CUSTOM]
    cfg = json.loads((tmp_path / "het" / "config.json").read_text())
    assert cfg["arch_info"]["cnn"]["kind"] == "zoo" and cfg["arch_info"][CUSTOM]["kind"] == "custom"
    assert {p.name for p in (tmp_path / "het" / "models").iterdir()} == {"cnn.pt", f"{CUSTOM}.pt"}
    # FedAvgM keeps a momentum buffer per parameter of the custom model (no BN buffers to special-case)
    s2 = feddf.train(dataset="fashion-mnist", arch="tests.custom_models:build_with_norm", norm="gn",
                     aggregator="fedavgm", clients=2, rounds=2, local_epochs=1, train_limit=200, test_limit=100,
                     out=str(tmp_path / "m"), progress=False, log=None)
    assert s2["rounds"] == 2
    cfg2 = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg2["arch_info"]["tests.custom_models:build_with_norm"]["norm_passed"] is True
    clf = feddf.load_classifier(tmp_path / "m")
    assert any(isinstance(m, torch.nn.GroupNorm) for m in clf.model.modules())  # norm="gn" reached the factory


def test_bad_arch_specs_get_one_line(tmp_path):
    _one_line(run_cli("train", "--arch", "nope:x", "--out", str(tmp_path / "a")), "nope:x", "cannot import")
    from feddf.models import check_output, get_model

    for spec, needle in [("tests.custom_models:build_not_a_module", "not a torch.nn.Module"),
                         ("tests.custom_models:missing", "has no attribute 'missing'"),
                         ("resnet9", "unknown architecture"), ("tests.custom_models", "pkg.module:factory")]:
        with pytest.raises(FeddfError, match=needle) as e:
            get_model(spec, 10, 1)
        assert "\n" not in str(e.value)
    with pytest.raises(FeddfError, match="returns a tuple") as e:
        check_output(get_model("tests.custom_models:build_tuple", 10, 1), "tests.custom_models:build_tuple", 10, 1,
                     28)
    assert "\n" not in str(e.value)


def test_custom_classifier_whose_module_is_gone_is_one_line(tmp_path, monkeypatch):
    import sys

    from feddf.models import get_model, load_classifier, save_classifier

    (tmp_path / "gone_mod_byo.py").write_text("from tests.custom_models import build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    m = get_model("gone_mod_byo:build", 10, 1)
    save_classifier(tmp_path / "c.pt", m, arch="gone_mod_byo:build", num_classes=10, in_channels=1, norm="bn",
                    mean=[0.5], std=[0.5], resolution=28)
    assert load_classifier(tmp_path / "c.pt").meta["arch_info"]["module"] == "tests.custom_models"
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))
    sys.path.remove(str(tmp_path))
    sys.modules.pop("gone_mod_byo", None)
    with pytest.raises(FeddfError, match="needs architecture 'gone_mod_byo:build'.*cannot import module") as e:
        load_classifier(tmp_path / "c.pt")
    assert "\n" not in str(e.value)


def test_timm_models_build_without_weights():
    timm = pytest.importorskip("timm", reason="timm not installed (pip install feddf[timm])")
    from feddf.models import check_output, describe_arch, get_model

    m = get_model("timm:test_resnet", 10, 1)
    check_output(m, "timm:test_resnet", 10, 1, 28)
    assert describe_arch("timm:test_resnet") == {"spec": "timm:test_resnet", "kind": "timm", "module": "timm",
                                                 "version": timm.__version__, "pretrained": False}
    with pytest.raises(FeddfError, match="timm has no model"):
        get_model("timm:no_such_net", 10, 1)


def test_teacher_ensemble_falls_back_for_arbitrary_modules():
    from feddf.federated.teachers import TeacherEnsemble
    from feddf.models import get_model

    torch.manual_seed(0)
    teachers = [get_model(CUSTOM, 10, 1).eval() for _ in range(3)]  # LayerNorm, dropout, x.view(B, -1)
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        ref = torch.stack([m(x) for m in teachers])
    loop = TeacherEnsemble(teachers)
    torch.testing.assert_close(loop.logits(x), ref, rtol=1e-4, atol=1e-4)
    assert loop.fallbacks == ["channels_last"]  # .view on a channels_last activation fails: contiguous inputs
    torch.testing.assert_close(loop.logits(x), ref, rtol=1e-4, atol=1e-4)  # settled: same path again
    vm = TeacherEnsemble(teachers, batched=True)  # the vmap batching rule over stacked weights
    torch.testing.assert_close(vm.logits(x), ref, rtol=1e-4, atol=1e-4)
    assert len(vm._fns) == 1 and "vmap" not in vm.fallbacks
    bad = [get_model("tests.custom_models:build_tuple", 10, 1).eval() for _ in range(2)]
    for batched in (False, True):
        with pytest.raises(FeddfError, match="returns a tuple"):
            TeacherEnsemble(bad, batched=batched).logits(x)


# ---------------------------------------------------------------------------------------------------- data
def _named_subset(n_train: int, n_test: int, seed: int):
    """The exact images `feddf train --train-limit n_train --test-limit n_test --seed S` uses, in its order."""
    from feddf.data import get_dataset

    train = get_dataset("fashion-mnist:train")
    keep = np.sort(np.random.default_rng(seed).permutation(len(train))[:n_train])
    test = get_dataset(f"fashion-mnist:test[5000:{5000 + n_test}]")
    return (train.images[keep].numpy(), train.labels[keep].numpy(), test.images.numpy(), test.labels.numpy(),
            train.info)


def _write_folder(root: Path, x, y, x_test, y_test, info) -> None:
    from PIL import Image

    for split, xs, ys in (("train", x, y), ("test", x_test, y_test)):
        for i, (img, k) in enumerate(zip(xs, ys)):
            d = root / split / f"{k:02d}"  # sorted folder names = label order
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0]).save(d / f"{i:05d}.png")  # numbered: the loader keeps this order
    (root / "dataset.json").write_text(json.dumps({"class_names": list(info.class_names), "mean": list(info.mean),
                                                   "std": list(info.std)}))


def test_folder_and_npz_datasets_give_the_named_accuracies(fmnist_available, tmp_path):
    import feddf
    from feddf.data import get_dataset

    seed, n_train, n_test = 7, 300, 120
    x, y, xt, yt, info = _named_subset(n_train, n_test, seed)
    _write_folder(tmp_path / "fm", x, y, xt, yt, info)
    np.savez(tmp_path / "fm.npz", x_train=x.transpose(0, 2, 3, 1), y_train=y, x_test=xt, y_test=yt,
             mean=np.array(info.mean), std=np.array(info.std), class_names=np.array(info.class_names))
    folder = get_dataset(f"folder:{tmp_path / 'fm'}")
    assert torch.equal(folder.images, torch.from_numpy(x)) and torch.equal(folder.labels, torch.from_numpy(y))
    assert folder.info.class_names == info.class_names and folder.info.details["stats"] == "given"
    assert get_dataset(f"npz:{tmp_path / 'fm.npz'}:test[10:20]").images.shape == (10, 1, 28, 28)

    common = dict(TINY, arch="cnn", seed=seed, clients=3, local_epochs=2, batch_size=16, local_lr=0.05,
                  partition="iid", augment="none")
    runs = {
        "named": feddf.train(dataset="fashion-mnist", train_limit=n_train, test_limit=n_test,
                             out=str(tmp_path / "named"), **common),
        "folder": feddf.train(dataset=f"folder:{tmp_path / 'fm'}", out=str(tmp_path / "folder"), **common),
        "npz": feddf.train(dataset=f"npz:{tmp_path / 'fm.npz'}", out=str(tmp_path / "npz"), **common),
    }
    keys = ("acc", "ensemble_acc", "best_step", "val_acc", "val_history", "distill_steps")
    ref = {k: runs["named"]["final"][k] for k in keys}
    # real training and distillation (whether a step beat the FedAvg start on validation is the data's business)
    assert ref["acc"]["cnn"]["fedavg"] > 0.2 and ref["distill_steps"]["cnn"] > 0 and len(ref["val_history"]["cnn"]) > 1
    for name in ("folder", "npz"):
        assert {k: runs[name]["final"][k] for k in keys} == ref, name
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        assert cfg["dataset_info"]["class_names"] == list(info.class_names)
        assert cfg["dataset_info"]["mean"] == list(info.mean) and cfg["dataset_info"]["n"] == {"train": n_train,
                                                                                              "test": n_test}
        assert cfg["channels"] == 1 and cfg["resolution"] == 28


def test_seeded_splits_derived_statistics_and_caches_as_datasets(tmp_path):
    from feddf.data import dataset_info, get_dataset

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    y = np.arange(50) % 5
    np.savez(tmp_path / "one.npz", x=x, y=y)
    info = dataset_info(f"npz:{tmp_path / 'one.npz'}")
    tr, te = get_dataset(f"npz:{tmp_path / 'one.npz'}"), get_dataset(f"npz:{tmp_path / 'one.npz'}:test")
    assert (len(tr), len(te)) == (40, 10) and info.channels == 3 and info.size == 8 and info.num_classes == 5
    all_rows = {r.tobytes() for r in x.transpose(0, 3, 1, 2)}
    assert {r.numpy().tobytes() for r in torch.cat([tr.images, te.images])} == all_rows  # a partition of the set
    want = tr.images.double().div(255)
    np.testing.assert_allclose(info.mean, want.mean(dim=(0, 2, 3)).numpy(), rtol=1e-9)
    np.testing.assert_allclose(info.std, want.std(dim=(0, 2, 3), correction=0).numpy(), rtol=1e-9)
    assert info.details["split_rule"].startswith("seeded split")
    assert torch.equal(get_dataset(f"npz:{tmp_path / 'one.npz'}").images, tr.images)  # the split is fixed
    # a labelled feddf cache (here imported from that npz) is a dataset too, names from its label_names
    from feddf.data.importers import import_source

    np.savez(tmp_path / "named.npz", x=x, y=y, class_names=np.array(list("abcde")))
    cache = import_source(f"npz:{tmp_path / 'named.npz'}", tmp_path / "c.h5", progress=False)
    ci = dataset_info(str(cache))
    assert ci.class_names == tuple("abcde") and ci.num_classes == 5
    assert torch.equal(get_dataset(f"cache:{cache}").images, tr.images)  # same rows, same seeded split
    with pytest.raises(FeddfError, match="does not exist"):
        get_dataset(f"npz:{tmp_path / 'nope.npz'}")


def test_folder_with_mixed_image_sizes_is_one_line(tmp_path):
    from PIL import Image

    from feddf.data import get_dataset

    for k, size in ((0, 28), (1, 32)):
        (tmp_path / "mix" / f"c{k}").mkdir(parents=True)
        for i in range(3):
            Image.new("L", (size, size)).save(tmp_path / "mix" / f"c{k}" / f"{i}.png")
    with pytest.raises(FeddfError, match="28x28, 32x32: a task dataset needs one image size") as e:
        get_dataset(f"folder:{tmp_path / 'mix'}")
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------- API
def test_api_doc_example_runs(fmnist_available, tmp_path, monkeypatch):
    text = (ROOT / "docs" / "api.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/api.md", "exec"), {"__name__": "__docs__"})
    assert (tmp_path / "reports" / "api-demo" / "report.html").is_file()
    assert {p.name for p in (tmp_path / "runs" / "api-demo" / "models").iterdir()} == {"cnn.pt", f"{CUSTOM}.pt"}


def test_api_options_are_checked_and_import_is_light(tmp_path):
    import subprocess
    import sys

    import feddf

    with pytest.raises(FeddfError, match="unknown option.*distil_steps"):
        feddf.train(distil_steps=3)
    with pytest.raises(FeddfError, match="config must be a GenConfig"):
        feddf.gen(config=feddf.TrainConfig())
    cfg = feddf.train_config(feddf.TrainConfig(arch="cnn"), archs="cnn,vgg9", rounds=3)
    assert cfg.archs == ["cnn", "vgg9"] and cfg.rounds == 3
    out = subprocess.run([sys.executable, "-c", "import sys, feddf; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_feddf_audit_is_the_api_whatever_was_imported_before():
    """`feddf.audit` is both the API function and the subpackage feddf/audit/: importing a submodule (as every audit
    does) must not turn `feddf.audit(...)` into "'module' object is not callable"."""
    import importlib

    import feddf
    from feddf.errors import FeddfError

    importlib.import_module("feddf.audit.report")
    for _ in range(2):
        with pytest.raises(FeddfError, match="give the caches to audit"):
            feddf.audit()
