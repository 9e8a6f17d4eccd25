"""Flower on node-local data (docs/flower.md, "Node-local data"), as real processes on 127.0.0.1: every SuperNode
trains on its own npz (different class mixes and sizes), the server holds only its validation and test npz; a node
whose data has another shape or more classes than the task is refused in one line and the round goes on; a client's
label counts leave it only when the server step uses them; no file or log of the ServerApp names a node's data, and
no Flower process is left behind.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("flwr")

from feddf.cli import main  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.test_flower import ENV, leftovers, metrics  # noqa: E402

TINY = ["--fraction", "1", "--local-epochs", "1", "--distill-steps", "6", "--eval-every", "3", "--eval-batch-size",
        "200", "--distill-source", "noise", "--quiet"]
COUNTS = "metrics/class-counts"


@pytest.fixture(scope="module")
def sets(tmp_path_factory, fmnist_available):
    """name -> npz: spec. alpha: 300 images of classes 0-4, beta: 150 of classes 3-9, server: 250 of every class;
    shape: 3x32x32 random images, classes: labels 5..14 (more classes than the task's 10)."""
    from feddf.data import get_dataset

    d = tmp_path_factory.mktemp("node-data")
    fm = get_dataset("fashion-mnist:train[:2000]")
    x, y = fm.images.numpy(), fm.labels.numpy()
    rng = np.random.default_rng(0)
    arrays = {"alpha-7f3": (x[np.flatnonzero(y < 5)[:300]], y[np.flatnonzero(y < 5)[:300]]),
              "beta-7f3": (x[np.flatnonzero(y >= 3)[:150]], y[np.flatnonzero(y >= 3)[:150]]),
              "server": (x[1000:1250], y[1000:1250]),
              "shape-7f3": (rng.integers(0, 255, (40, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 40)),
              "classes-7f3": (x[:40], y[:40] + 5)}
    for name, (xs, ys) in arrays.items():
        np.savez(d / f"{name}.npz", x=xs, y=ys)
    return {name: f"npz:{d / name}.npz" for name in arrays}


def named_nowhere(paths, specs) -> list[str]:
    """Files among `paths` (recursively) that name a node's data: its spec, its path or its file name."""
    needles = [s.encode() for spec in specs for s in (spec, spec.split(":", 1)[1], Path(spec).stem)]
    files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    assert files
    return [str(f) for f in files if any(n in f.read_bytes() for n in needles)]


def test_nodes_train_on_their_own_data_a_bad_node_is_refused_and_the_server_never_names_it(tmp_path, sets):
    """FedDF, two architectures, 2 rounds (`flower local --node-data`): node 1 holds more classes than the task."""
    from feddf.data import get_dataset

    run, state = tmp_path / "run", tmp_path / "state"
    nodes = [sets["alpha-7f3"], sets["classes-7f3"], sets["beta-7f3"]]
    p = run_cli("flower", "local", "--node-data", ",".join(nodes), "--server-data", sets["server"], "--test-data",
                sets["server"] + ":test", "--archs", "cnn,resnet8", *TINY, "--rounds", "2", "--out", str(run),
                "--state-dir", str(state), "--local-loss", "ce", "--logit-adjust", "1", env=ENV, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = metrics(run)
    assert [(r["round"], r["replied"], sorted(r["failed"])) for r in rows] == [(1, [0, 2], ["1"]), (2, [0, 2], ["1"])]
    assert all(r["teachers"] == 2 and r["distill_steps"]["resnet8"] > 0 for r in rows)
    # what each node reported: its example count (all of its data=, the npz's train split), or its refusal
    sizes = [len(get_dataset(s)) for s in nodes]
    reported = json.loads((run / "nodes.json").read_text())["clients"]
    assert [(c["id"], c["arch"], c["n"]) for c in reported] == [(0, "cnn", sizes[0]), (1, "cnn", None),
                                                                (2, "resnet8", sizes[2])]
    assert sizes[0] != sizes[2] and "has 15 classes (labels up to 14) but the run's task has 10" in \
        reported[1]["refused"]
    # FedDF with --logit-adjust 1: the counts travel, because the server's teachers use them
    assert all(COUNTS in keys for r in rows for keys in r["received"].values())
    config = json.loads((run / "config.json").read_text())
    assert config["server_data"] == config["dataset"] == sets["server"] and config["num_classes"] == 10
    assert not (run / "partition.json").exists()
    # the ServerApp's run folder, its log, the SuperLink's log and the run's config never name a node's data
    assert not named_nowhere([run, state / "run.log", state / "superlink.log", *state.glob("config-*.json")], nodes)
    assert not leftovers(json.loads((state / "processes.json").read_text()).values())


@pytest.mark.slow  # 56-80 s of real processes on 2 shared cores; the deployment above covers node-local data in CI
def test_fedavg_and_feddf_without_logit_adjust_keep_label_counts_on_the_nodes(tmp_path, sets):
    """One deployment, two runs: FedAvg (2 rounds) and FedDF --logit-adjust 0; node 1's images are 3x32x32."""
    from feddf.federated.config import TrainConfig
    from feddf.flower.launch import LocalFlower, prepare

    state = tmp_path / "state"
    nodes = [sets["alpha-7f3"], sets["shape-7f3"], sets["beta-7f3"]]
    common = dict(server_data=sets["server"], clients=3, fraction=1.0, local_epochs=1, eval_batch_size=200,
                  progress=False, arch="cnn")
    runs = {"fedavg": TrainConfig(aggregator="fedavg", rounds=2, out=str(tmp_path / "fedavg"), **common),
            "feddf": TrainConfig(aggregator="feddf", logit_adjust=0.0, rounds=1, distill_source="noise",
                                 distill_steps=6, eval_every=3, out=str(tmp_path / "feddf"), **common)}
    with LocalFlower([None] * 3, state_dir=state, stream=False, data=nodes) as fl:
        for cfg in runs.values():
            fl.run(prepare(cfg), "flower-deployment")
        pids = [p.pid for p in fl.procs.values()]
    for name, cfg in runs.items():
        rows = metrics(Path(cfg.out))
        assert [(r["replied"], list(r["failed"])) for r in rows] == [([0, 2], ["1"])] * cfg.rounds, name
        assert "holds 3x32x32 images but the run's task (the server's --server-data) is 1x28x28" in \
            rows[0]["failed"]["1"]
        assert all(sorted(keys) == keys and keys and COUNTS not in keys
                   for r in rows for keys in r["received"].values()), name  # the counts stay on the nodes
        assert rows[-1]["ensemble_acc"] is not None and rows[-1]["acc"]["cnn"]["fedavg"] > 0
    assert not named_nowhere([tmp_path / name for name in runs] + [state / "run.log", state / "superlink.log"],
                             nodes)
    assert pids and not leftovers(pids)


def test_node_data_options_are_checked_in_one_line_before_anything_starts(tmp_path, sets):
    out, state = tmp_path / "out", tmp_path / "state"
    good = ",".join([sets["alpha-7f3"], sets["beta-7f3"]])
    toml = tmp_path / "train.toml"
    toml.write_text(f'server_data = "{sets["server"]}"\nout = "{out}"\n')
    base = ["--out", str(out), "--state-dir", str(state), "--distill-source", "noise", "--quiet"]
    for args, message in (
            (["flower", "local", "--node-data", good, *base], "--node-data: give the server's own labelled set"),
            (["flower", "local", "--server-data", sets["server"], *base], "needs SuperNodes that bring it"),
            (["flower", "local", "--test-data", sets["server"], *base], "--test-data"),
            (["flower", "local", "--node-data", good, "--nodes", "3", "--server-data", sets["server"], *base],
             "--nodes 3 --node-data with 2 specs"),
            (["flower", "local", "--node-data", f"{good},npz:{tmp_path}/nope.npz", "--server-data", sets["server"],
              *base], f"--node-data npz:{tmp_path}/nope.npz: {tmp_path}/nope.npz does not exist"),
            (["flower", "local", "--node-data", f'{good},npz:/a"b.npz', "--server-data", sets["server"], *base],
             "quotes and backslashes"),
            (["flower", "local", "--node-data", f"{good},", "--server-data", sets["server"], *base], "none empty"),
            (["flower", "local", "--node-data", good, "--server-data", f"npz:{tmp_path}/x.npz", *base],
             f"--server-data npz:{tmp_path}/x.npz: {tmp_path}/x.npz does not exist"),
            (["flower", "local", "--node-data", good, "--server-data", sets["server"], "--dataset", "cifar10",
              *base], "drop --dataset"),
            (["flower", "local", "--node-data", good, "--server-data", sets["server"], "--train-limit", "50",
              *base], "drop --train-limit"),
            (["flower", "simulate", "--config", str(toml), *base], "needs SuperNodes that bring it"),
            (["train", "--config", str(toml), "--quiet"], "feddf train splits --dataset")):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, (args, r.output)
        assert not out.exists() and not state.exists(), args  # nothing written, nothing started
