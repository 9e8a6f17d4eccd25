"""FedDF on Flower (feddf/flower/, docs/flower.md): a real SuperLink + SuperNodes deployment on 127.0.0.1 gives the
same per-round accuracies as `feddf train` (FedDF from a DCGAN cache with two architectures, and FedAvg), a SuperNode
killed mid-run is recorded and the run goes on, a failing ServerApp or a bad setting exits 1 with one line.

Equality is exact (==), not within 1e-6: both engines call the same fusion.client_step / fusion.fuse with the same
seeds, the replies are sorted by partition id before averaging (the same float summation order as `feddf train`),
the server sends fp32 ArrayRecords (exact for fp32 weights and integer buffers below 2**24), and each node replies
with its encoded upload (feddf.federated.precision: fp32, half, or 1-bit + scales) byte for byte.
"""
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from tests.conftest import run_cli  # noqa: E402

ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY = ["--dataset", "fashion-mnist", "--clients", "3", "--fraction", "1", "--local-epochs", "1",
        "--train-limit", "300", "--test-limit", "200", "--distill-steps", "6", "--eval-every", "3",
        "--eval-batch-size", "200", "--quiet"]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def accs(rows):
    return [(r["round"], r["acc"], r["ensemble_acc"], r["best_step"]) for r in rows]


def leftovers(pids) -> list[str]:
    """Live processes in the process groups of `pids` (the launcher starts each process as a group leader, so this
    also finds a ClientApp a killed SuperNode left behind) or started with `--parent-pid` one of them (Flower's
    SuperExec, which detaches into a group of its own); zombies count as gone."""
    pids = {int(p) for p in pids}
    ps = subprocess.run(["ps", "-ww", "-eo", "pgid=,stat=,args="], capture_output=True, text=True, check=True).stdout
    out = []
    for line in ps.splitlines():
        pgid, stat, args = line.split(None, 2)
        parent = args.split("--parent-pid ")[1].split()[0] if "--parent-pid " in args else "0"
        if not stat.startswith("Z") and (int(pgid) in pids or int(parent) in pids):
            out.append(args)
    return out


@pytest.fixture(scope="module")
def dcgan_cache(tmp_path_factory, fmnist_available):
    out = tmp_path_factory.mktemp("cache") / "dcgan.h5"
    run_cli("gen", "--generator", "dcgan-fashion-mnist", "--n", "512", "--out", str(out), check=True, env=ENV)
    return out


def test_help():
    for args, flags in ((["flower"], ["simulate", "local", "server", "certs"]),
                        (["flower", "simulate"], ["--min-replies", "--archs", "--distill-source", "--state-dir"]),
                        (["flower", "local"], ["--nodes", "--node-arch", "--round-timeout", "--aggregator", "--secure",
                                               "--ssl-certfile", "--resume", "--isolation", "--node-poll",
                                               "--node-data", "--server-data", "--test-data"]),
                        (["flower", "server"], ["--node-public-key", "--ssl-ca-certfile", "--host", "--port",
                                                "--server-data", "--test-data"]),
                        (["flower", "certs"], ["--out", "--host", "--nodes", "--days"])):
        p = run_cli(*args, "--help", check=True)
        assert all(f in p.stdout for f in flags), p.stdout


def test_wire_round_trip_is_exact_and_restores_dtypes():
    from feddf.flower.wire import from_record, to_record
    from feddf.models import get_model

    state = get_model("resnet8", 10, 1, "bn").state_dict()
    state = {k: (v + 7 if v.dtype == torch.int64 else v) for k, v in state.items()}
    back = from_record(to_record(state), state)
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in state.items())
    assert {a.dtype for a in to_record(state).values()} == {"float32"}  # what travels in Flower's Result
    from feddf.federated.precision import encode
    from feddf.flower.wire import model_from_record, model_to_record

    record = model_to_record(state)  # what a node is sent: one array, the fp32 payload feddf train counts
    assert list(record) == ["payload"] and record["payload"].numpy().tobytes() == encode(state, "fp32")
    back = model_from_record(record, state)
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in state.items())


def test_node_checks_are_one_line():
    from feddf.errors import FeddfError
    from feddf.federated.config import TrainConfig
    from feddf.flower.server_app import check_nodes

    cfg = TrainConfig(clients=3, archs=["cnn", "resnet8"]).resolved()
    node = lambda k, arch="", n=3: {"partition-id": k, "num-partitions": n, "arch": arch}  # noqa: E731
    assert check_nodes(cfg, {11: node(2), 12: node(0), 13: node(1, "resnet8")}) == \
        {0: (12, "cnn"), 1: (13, "resnet8"), 2: (11, "resnet8")}
    for infos, message in (({1: node(0), 2: node(0), 3: node(1)}, "also held by"),
                           ({1: node(0), 2: node(1, "nonet"), 3: node(2)}, "unknown architecture arch='nonet'"),
                           ({1: node(0), 2: node(1, "vgg9"), 3: node(2)}, "not one of this run's --archs"),
                           ({1: node(0, n=4), 2: node(1), 3: node(2)}, "num-partitions=4"),
                           ({1: node(0), 2: node(1)}, "no SuperNode holds partition-id [2]")):
        with pytest.raises(FeddfError, match=message.replace("[", r"\[").replace("]", r"\]")):
            check_nodes(cfg, infos)


@pytest.mark.slow
def test_deployment_feddf_from_dcgan_cache_equals_feddf_train_and_compare_and_audit_read_it(tmp_path, dcgan_cache):
    from feddf.models import load_classifier

    # mixed precision too: clients 0, 1 fp32, client 2 binary (p[i * P // n]); the wire carries the packed payloads
    args = [*TINY, "--archs", "cnn,resnet8", "--rounds", "2", "--distill-source", str(dcgan_cache),
            "--client-precision", "fp32,binary"]
    fl, tr, state = tmp_path / "flower", tmp_path / "train", tmp_path / "state"
    p = run_cli("flower", "local", "--nodes", "3", *args, "--out", str(fl), "--state-dir", str(state), "--json",
                env=ENV, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout)
    assert summary["rounds"] == 2 and summary["out"] == str(fl)
    run_cli("train", *args, "--out", str(tr), check=True, env=ENV)
    rows, ref = metrics(fl), metrics(tr)
    assert accs(rows) == accs(ref)  # exact: same functions, seeds and summation order
    assert all(r["replied"] == [0, 1, 2] and r["missing"] == [] and r["teachers"] == 3 for r in rows)
    assert all(r["acc"][a]["distilled"] is not None for r in rows for a in ("cnn", "resnet8"))
    assert [r["upload_bytes"] for r in rows] == [r["upload_bytes"] for r in ref]  # the same encoded payloads
    assert [r["download_bytes"] for r in rows] == [r["download_bytes"] for r in ref]
    up = rows[0]["upload_bytes"]
    assert 0 < up["2"] * 10 < up["0"]  # the binarised resnet8 sends ~1/20 of what the fp32 cnn sends
    cfg = json.loads((fl / "config.json").read_text())
    assert cfg["engine"]["name"] == "flower-deployment" and set(cfg["engine"]["nodes"]) == {"0", "1", "2"}
    assert cfg["hashes"]["source"] == json.loads((tr / "config.json").read_text())["hashes"]["source"]
    part = json.loads((fl / "partition.json").read_text())
    assert part == json.loads((tr / "partition.json").read_text())
    assert [c["arch"] for c in part["clients"]] == ["cnn", "cnn", "resnet8"]
    for a in ("cnn", "resnet8"):
        m1, m2 = load_classifier(fl / "models" / f"{a}.pt"), load_classifier(tr / "models" / f"{a}.pt")
        assert all(torch.equal(x, y) for x, y in zip(m1.model.state_dict().values(), m2.model.state_dict().values()))
    # one long-lived ClientApp worker per node answered its QUERY and both TRAINs; every process is gone
    assert all((state / f"clientapp-{k}.log").read_text().count(" completed in ") == 3 for k in range(3))
    pids = json.loads((state / "processes.json").read_text())
    assert {"superlink", "supernode-0", "supernode-2", "clientapp-2"} <= set(pids) and not leftovers(pids.values())
    rep = run_cli("compare", str(fl), str(tr), "--out", str(tmp_path / "rep"), "--json", check=True)
    report = json.loads(rep.stdout)
    assert {r["run"] for r in report["rows"]} == {"flower", "train"} and len(report["rows"]) == 4
    aud = run_cli("audit", str(dcgan_cache), "--labeler", str(fl), "--labeler-arch", "resnet8", "--no-fid",
                  "--out", str(tmp_path / "audit"), check=True, env=ENV)
    assert "dcgan" in aud.stdout and (tmp_path / "audit" / "report.html").is_file()


@pytest.mark.slow
def test_fedavg_equals_feddf_train_and_a_supernode_killed_after_round_2_is_recorded_and_the_run_goes_on(tmp_path):
    """SuperNodes without an arch in their node config (the server derives it, as in simulation), Python API."""
    from feddf.federated.config import TrainConfig
    from feddf.flower.launch import LocalFlower, prepare

    os.environ.update(ENV)
    run = tmp_path / "run"
    cfg = prepare(TrainConfig(dataset="fashion-mnist", arch="cnn", aggregator="fedavg", clients=3, fraction=1.0,
                              local_epochs=1, train_limit=300, test_limit=200, eval_batch_size=200, rounds=3,
                              progress=False, out=str(run), trackers=["csv"]))
    with LocalFlower([None] * 3, state_dir=tmp_path / "state", stream=False) as fl:
        def kill_after_round_2():
            while not (run / "metrics.jsonl").exists() or len(metrics(run)) < 2:
                time.sleep(0.1)
            os.kill(fl.procs["supernode-2"].pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_after_round_2, daemon=True)
        killer.start()
        fl.run(cfg, "flower-deployment", round_timeout=120)
        killer.join(5)
        pids = [p.pid for p in fl.procs.values()]
    assert pids and not leftovers(pids)  # the killed node's orphaned ClientApp included
    ref = tmp_path / "train"
    run_cli("train", "--dataset", "fashion-mnist", "--arch", "cnn", "--aggregator", "fedavg", *TINY, "--rounds", "2",
            "--out", str(ref), check=True, env=ENV)
    rows = metrics(run)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert accs(rows[:2]) == accs(metrics(ref))  # exact, as FedDF
    assert all(r["replied"] == [0, 1, 2] and r["missing"] == [] for r in rows[:2])
    assert rows[2]["selected"] == [0, 1, 2] and rows[2]["replied"] == [0, 1] and rows[2]["missing"] == [2]
    assert (run / "models" / "cnn.pt").exists()
    table = (run / "metrics.csv").read_text().splitlines()  # --log csv, written by the ServerApp
    assert [line.split(",")[0] for line in table[1:]] == ["1", "2", "3"]


@pytest.mark.slow
def test_a_failing_serverapp_exits_1_with_its_error_and_stops_everything(tmp_path):
    """With Flower's own SuperNode and ClientApp process per message (--isolation subprocess --node-poll 3)."""
    state = tmp_path / "state"
    p = run_cli("flower", "local", "--nodes", "1", *TINY[:2], *TINY[4:], "--arch", "cnn", "--aggregator", "fedavg",
                "--rounds", "1", "--node-arch", "0=nonet", "--out", str(tmp_path / "r"), "--state-dir", str(state),
                "--isolation", "subprocess", "--node-poll", "3", env=ENV, timeout=300)
    assert p.returncode == 1, p.stdout + p.stderr[-2000:]
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "unknown architecture arch='nonet'" in errors[0]
    assert "ended finished:failed" in errors[0]
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
    assert not leftovers(json.loads((state / "processes.json").read_text()).values())


def test_a_cache_that_does_not_fit_is_one_line_before_anything_starts(tmp_path):
    from tests.test_train import write_cache

    rgb = write_cache(tmp_path / "rgb32.h5", 64, 3, 32)
    p = run_cli("flower", "local", *TINY, "--arch", "cnn", "--distill-source", str(rgb),
                "--out", str(tmp_path / "r"), "--state-dir", str(tmp_path / "state"), env=ENV)
    assert p.returncode == 1 and "--source-resize" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "r").exists()


def test_a_foreign_out_folder_is_refused_and_untouched_before_anything_starts(tmp_path):
    """The launcher claims --out like `feddf train` does: a folder that is not a feddf run stays as it was."""
    out = tmp_path / "theirs"
    (out / "models").mkdir(parents=True)
    (out / "config.json").write_text('{"mine": true}')
    (out / "models" / "x.pt").write_bytes(b"precious")
    before = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file())
    p = run_cli("flower", "local", *TINY, "--arch", "cnn", "--aggregator", "fedavg", "--out", str(out),
                "--state-dir", str(tmp_path / "state"), env=ENV)
    assert p.returncode == 1 and "is not a feddf flower run" in p.stderr and "Traceback" not in p.stderr
    assert sorted((q.relative_to(out), q.read_bytes()) for q in out.rglob("*") if q.is_file()) == before
    assert not (tmp_path / "state").exists()


def test_encoded_uploads_cross_the_wire_byte_for_byte():
    from feddf.federated.precision import decode, encode
    from feddf.flower.wire import payload_from_record, payload_to_record, to_record
    from feddf.models import get_model

    torch.manual_seed(0)
    state = get_model("resnet8", 10, 1).state_dict()
    for precision in ("fp32", "bf16", "binary"):
        blob = encode(state, precision)
        assert payload_from_record(payload_to_record(blob)) == blob
        assert decode(payload_from_record(payload_to_record(blob)))[0] == precision
    with pytest.raises(Exception, match="instead of an encoded payload"):
        payload_from_record(to_record(state))
