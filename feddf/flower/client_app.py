"""The feddf ClientApp: answers the server's QUERY (which partition and architecture this node holds) and TRAIN
(feddf's local training, `fusion.client_step`, on the node's partition or its own data).

    flower-supernode --insecure --superlink 127.0.0.1:9092 --node-config 'partition-id=0 num-partitions=3 arch="cnn"'

The partition comes from feddf's own partitioner keyed by `partition-id` (`setup.load_task` with the run's config,
which every TRAIN message carries), so Flower and `feddf train` split the data identically. In a run on node-local
data (`--server-data`) the node instead trains on all of its node config's `data="SPEC"` (nodedata.node_task),
checked against the server's task; the spec never leaves the node. The architecture is the
node config's `arch` (deployment) or, when the node config has none (simulation: Flower only sets partition-id and
num-partitions), the one the server derived from the run config and the partition id.

With Flower's own `--isolation subprocess` every message gets a fresh ClientApp process, so this module imports
torch and feddf's training code only inside TRAIN: a QUERY never pays for them. `feddf flower local` runs the
SuperNodes with `--isolation process` and one long-lived feddf.flower.worker each instead, where the imports and
the loaded partition (`_TASKS`) stay across messages (docs/benchmarks.md, "FedDF on Flower").
"""
from __future__ import annotations

import time

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()
_TASKS: dict = {}  # config JSON -> Task: a long-lived ClientApp process (Ray, feddf worker) loads its data once
task_claimed_at: float | None = None  # perf_counter when feddf.flower.worker claimed the current task


def node_info(node_config) -> dict:
    """partition-id / num-partitions / arch of a node config ("" / -1 when absent)."""
    nc = dict(node_config)
    return {"partition-id": int(nc.get("partition-id", -1)), "num-partitions": int(nc.get("num-partitions", -1)),
            "arch": str(nc.get("arch", ""))}


def _process_age(now: float) -> float:
    """Seconds from Flower handing out the message to our handler at `now` (perf_counter): in a feddf worker, since
    it claimed the task (pulling the message, loading the app); else this process's age (Flower's process start,
    interpreter, imports)."""
    import os

    if task_claimed_at is not None:
        return max(0.0, now - task_claimed_at)
    try:  # Linux: /proc/self's ctime is the process start
        return max(0.0, time.time() - (time.perf_counter() - now) - os.stat(f"/proc/{os.getpid()}").st_ctime)
    except OSError:
        return -1.0


def load(cfg, conf, spec: str, k: int, arch: str, node_config):
    """This node's Task: its own data= (node-local data, cfg.server_data) or partition k of --dataset."""
    from feddf.errors import FeddfError

    if cfg.node_local_data():
        if not spec:
            raise FeddfError('this run trains on node-local data: start the SuperNode with data="SPEC" in its '
                             '--node-config')
        from feddf.flower.nodedata import node_task
        from feddf.flower.wire import TASK_KEY, task_from_json

        return node_task(cfg, task_from_json(str(conf[TASK_KEY])), spec, k, arch,
                         str(dict(node_config).get("data-root", "")))
    if spec:
        raise FeddfError("this node has data= in its --node-config but the run splits --dataset among its nodes: "
                         "start the run with --server-data SPEC for node-local data, or the node without data=")
    from feddf.federated.setup import load_task

    return load_task(cfg, log=lambda s: None, source=False)


@app.query()
def query(msg: Message, context: Context) -> Message:
    from feddf import __version__

    return Message(RecordDict({"node": ConfigRecord({**node_info(context.node_config),
                                                     "feddf-version": __version__})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    t0 = time.perf_counter()
    from feddf.errors import FeddfError
    from feddf.federated.fusion import client_step
    from feddf.flower.wire import CONFIG_KEY, config_from_json, model_from_record, payload_to_record
    from feddf.utils import resolve_device

    conf = msg.content["config"]
    info = node_info(context.node_config)
    k, r = info["partition-id"], int(conf["server-round"])
    arch = info["arch"] or str(conf["arch"])
    if k != int(conf["partition-id"]) or arch != str(conf["arch"]):
        raise FeddfError(f"node holds partition {k} ({arch}) but was sent partition {conf['partition-id']} "
                         f"({conf['arch']}): restart the run so the server learns the nodes again")
    text = str(conf[CONFIG_KEY])
    cfg = config_from_json(text)
    spec = str(context.node_config.get("data", ""))
    task = _TASKS.get((text, spec))
    if task is None:
        _TASKS.clear()
        task = _TASKS[text, spec] = load(cfg, conf, spec, k, arch, context.node_config)
    task.client_arch[k] = arch
    t1 = time.perf_counter()
    state = model_from_record(msg.content["arrays"], task.initial_state(arch))
    upd = client_step(cfg, task, r, k, state, resolve_device(str(context.node_config.get("device", cfg.device))))
    t2 = time.perf_counter()
    sent = {"num-examples": upd.n, "partition-id": k,
            "process-seconds": _process_age(t0), "load-seconds": t1 - t0, "train-seconds": t2 - t1}
    if cfg.server_uses_label_counts():  # the label histogram leaves the node only when the server step uses it
        sent["class-counts"] = upd.class_counts
    metrics = MetricRecord(sent)
    # the upload is the client's encoded model at its precision (1-bit + scales, half, or fp32), byte for byte
    return Message(RecordDict({"arrays": payload_to_record(upd.payload), "metrics": metrics}), reply_to=msg)
