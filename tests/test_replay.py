"""`feddf train --config runs/X/config.json` replays run X: the same accuracies in every round; a config.json with a
key that is not a `feddf train` option is refused with one line and nothing written."""
import json

from feddf.federated.config import FIELDS
from tests.conftest import run_cli

TINY = ["--dataset", "fashion-mnist", "--arch", "cnn", "--clients", "3", "--fraction", "1", "--rounds", "2",
        "--local-epochs", "1", "--train-limit", "300", "--test-limit", "200", "--distill-source", "noise",
        "--distill-steps", "4", "--eval-every", "2", "--eval-batch-size", "200", "--quiet"]


def accuracies(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["round"], r["acc"], r["ensemble_acc"], r.get("val_acc")) for r in rows]


def test_replay_from_config_json_gives_equal_metrics(tmp_path, fmnist_available):
    a, b = tmp_path / "a", tmp_path / "b"
    run_cli("train", *TINY, "--seed", "3", "--out", str(a), check=True)
    run_cli("train", "--config", str(a / "config.json"), "--out", str(b), "--quiet", check=True)
    assert accuracies(b) == accuracies(a)
    saved, replayed = json.loads((a / "config.json").read_text()), json.loads((b / "config.json").read_text())
    settings = FIELDS - {"out"}
    assert {k: replayed[k] for k in settings} == {k: saved[k] for k in settings}


def test_replay_refuses_an_unknown_key_with_one_line(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"arch": "cnn", "versions": {"feddf": "0"}, "rounds_per_epoch": 3}))
    p = run_cli("train", "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert p.returncode == 1 and "unknown key 'rounds_per_epoch'" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
    cfg.write_text("[1, 2]")
    p = run_cli("train", "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert p.returncode == 1 and "JSON object" in p.stderr and not (tmp_path / "r").exists()
