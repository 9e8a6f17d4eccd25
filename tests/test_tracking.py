"""`feddf train --log tensorboard|csv|wandb` and `feddf.train(on_round=fn)`: every round's metrics reach the
TensorBoard event files (read back with TensorBoard's own EventAccumulator), metrics.csv and the callback; bad
trackers are one line with nothing written."""
import csv
import importlib.util
import json

import pytest

from tests.conftest import run_cli

TINY = ["--dataset", "fashion-mnist", "--arch", "cnn", "--clients", "2", "--fraction", "1", "--rounds", "2",
        "--local-epochs", "1", "--train-limit", "150", "--test-limit", "100", "--distill-source", "noise",
        "--distill-steps", "4", "--eval-every", "2", "--eval-batch-size", "100", "--quiet"]


def test_tensorboard_and_csv_hold_every_rounds_metrics(tmp_path, fmnist_available):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    run_cli("train", *TINY, "--log", "tensorboard", "--log", "csv", "--out", str(out), check=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ev = EventAccumulator(str(out / "tensorboard"))
    ev.Reload()
    tags = set(ev.Tags()["scalars"])
    assert {"acc/cnn/fedavg", "acc/cnn/distilled", "ensemble_acc", "val_acc/cnn/distilled", "seconds/client",
            "seconds/distill", "seconds/server/distill", "bytes/upload", "bytes/download", "val_curve/cnn"} <= tags

    def read(tag):
        return [(e.step, round(e.value, 6)) for e in ev.Scalars(tag)]

    assert read("acc/cnn/distilled") == [(r["round"], round(r["acc"]["cnn"]["distilled"], 6)) for r in rows]
    assert read("ensemble_acc") == [(r["round"], round(r["ensemble_acc"], 6)) for r in rows]
    assert read("bytes/upload") == [(r["round"], float(sum(r["upload_bytes"].values()))) for r in rows]
    curve = [(r["round"] - 1) * 4 + s for r in rows for s, _ in r["val_history"]["cnn"]]
    assert [s for s, _ in read("val_curve/cnn")] == curve

    with open(out / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [int(t["round"]) for t in table] == [1, 2]
    assert [float(t["acc/cnn/fedavg"]) for t in table] == [r["acc"]["cnn"]["fedavg"] for r in rows]
    assert [float(t["seconds/client"]) for t in table] == [r["client_seconds"] for r in rows]


def test_the_python_api_calls_on_round_with_each_rounds_metrics(tmp_path, fmnist_available):
    import feddf

    seen = []
    summary = feddf.train(arch="cnn", aggregator="fedavg", clients=2, fraction=1.0, rounds=2, local_epochs=1,
                          train_limit=150, test_limit=100, eval_batch_size=100, progress=False, log=None,
                          out=str(tmp_path / "api"), on_round=seen.append)
    rows = [json.loads(line) for line in (tmp_path / "api" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in seen] == [1, 2] and json.loads(json.dumps(seen)) == rows
    assert summary["final"] == seen[-1]


@pytest.mark.parametrize("args, message", [
    (["--log", "mlflow"], "--log 'mlflow': choose tensorboard, csv or wandb"),
    (["--log", "csv", "--log", "csv"], "give each tracker once"),
])
def test_bad_trackers_are_one_line_and_write_nothing(tmp_path, args, message):
    out = tmp_path / "run"
    p = run_cli("train", *TINY, *args, "--out", str(out))
    assert p.returncode == 1 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_without_the_package_is_one_line(tmp_path):
    p = run_cli("train", *TINY, "--log", "wandb", "--out", str(tmp_path / "run"))
    assert p.returncode == 1 and "--log wandb: the `wandb` package is not installed" in p.stderr
    assert not (tmp_path / "run").exists()


def test_help():
    p = run_cli("train", "--help", check=True)
    assert "--log tensorboard|csv|wandb" in p.stdout
