"""The feddf ServerApp: reads the run's TrainConfig, learns every node's partition and architecture with one QUERY,
runs the `FedDF` strategy and writes the same run folder as `feddf train` (config.json, partition.json,
metrics.jsonl, models/<arch>.pt, checkpoint.pt), so `feddf compare` and `feddf audit --labeler` read it unchanged.
On node-local data (`server_data` in the config) it loads only the server's data (setup.load_server_task), sends
the nodes the task's description, and writes nodes.json (node, arch, reported example count, refusal) instead of
partition.json.

    flwr run feddf/flower/app <connection> --stream -c 'config-file="/abs/path/train.toml"'

Run config (feddf/flower/app/pyproject.toml; `feddf flower simulate|local` fill it in):
  config-file    JSON or TOML with `feddf train`'s keys; `out` (the run folder) must be an absolute path, because the
                 ServerApp runs in Flower's app folder.
  engine         recorded in config.json ("flower-simulation", "flower-deployment").
  min-replies    a round needs at least this many client replies (default 1), else the run stops with one line.
  node-timeout   seconds to wait for all --clients nodes to connect (default 120).
  round-timeout  seconds a round waits for replies (default 3600); a killed SuperNode is given up on earlier, once
                 the SuperLink marks it offline.
  poll-interval  seconds between the ServerApp's pulls for replies (default 0.2; Flower's own Grid waits 3).
Every setting is checked (config, distillation source against the task, node architectures) before any training.
"""
from __future__ import annotations

import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from feddf.errors import FeddfError

app = ServerApp()


def load_config(path: str):
    """The resolved TrainConfig from a JSON (as `feddf flower` writes it) or TOML (`feddf train --config`) file."""
    from feddf.federated.config import config_from, load_toml
    from feddf.flower.wire import config_from_json

    p = Path(path)
    if not path or not p.is_file():
        raise FeddfError(f"run config config-file={path!r}: no such file; pass -c 'config-file=\"/abs/train.toml\"'")
    cfg = config_from_json(p.read_text()) if p.suffix == ".json" else config_from(load_toml(p), {})
    cfg = cfg.resolved()
    if not Path(cfg.out).is_absolute():
        raise FeddfError(f"out = {cfg.out!r}: give the run folder as an absolute path (the ServerApp runs in "
                         f"Flower's app folder)")
    return cfg


class PollingGrid:
    """The run's Grid, with `send_and_receive` pulling replies every `interval` s instead of Flower's 3 s (the
    deployment Grid sleeps 3 s between pulls: up to 3 s lost per round trip on the server side alone)."""

    def __init__(self, grid: Grid, interval: float = 0.2):
        self._grid, self.interval = grid, interval

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        ids = set(self._grid.push_messages(list(messages)))
        end = time.monotonic() + (timeout if timeout is not None else float("inf"))
        out: list[Message] = []
        while ids and time.monotonic() < end:
            got = list(self._grid.pull_messages(ids))
            out.extend(got)
            ids.difference_update(m.metadata.reply_to_message_id for m in got)
            if ids:
                time.sleep(self.interval)
        return out


def check_nodes(cfg, infos: dict[int, dict]) -> dict[int, tuple[int, str]]:
    """partition id -> (node id, arch) from the nodes' QUERY replies; one FeddfError line for any bad setting."""
    from feddf.federated.partition import assign_archs
    from feddf.models import MODELS

    default = assign_archs(cfg.clients, cfg.archs)
    out: dict[int, tuple[int, str]] = {}
    for node, info in sorted(infos.items(), key=lambda kv: kv[1]["partition-id"]):
        k, n, arch = int(info["partition-id"]), int(info["num-partitions"]), str(info.get("arch") or "")
        where = f"SuperNode {node} (partition-id={k})"
        if n != cfg.clients:
            raise FeddfError(f"{where}: num-partitions={n} but the run has --clients {cfg.clients}: give every "
                             f"node num-partitions={cfg.clients}")
        if not 0 <= k < cfg.clients:
            raise FeddfError(f"{where}: partition-id must be in 0..{cfg.clients - 1} (--clients {cfg.clients})")
        if k in out:
            raise FeddfError(f"{where}: partition-id={k} is also held by SuperNode {out[k][0]}: give each node its "
                             f"own partition-id")
        if arch and arch not in cfg.archs:  # (a run's --archs may also name architectures outside MODELS)
            if arch not in MODELS:
                raise FeddfError(f"{where}: unknown architecture arch={arch!r} in its --node-config; choose one of "
                                 f"this run's --archs {','.join(cfg.archs)}")
            raise FeddfError(f"{where}: arch={arch!r} is not one of this run's --archs {','.join(cfg.archs)}")
        out[k] = (node, arch or default[k])
    missing = sorted(set(range(cfg.clients)) - set(out))
    if missing:
        raise FeddfError(f"no SuperNode holds partition-id {missing}: start one flower-supernode per partition")
    return out


def learn_nodes(grid: Grid, cfg, timeout: float) -> dict[int, tuple[int, str]]:
    """Wait for --clients nodes, QUERY each once for its node config, check it (check_nodes)."""
    t0 = time.monotonic()
    while len(ids := sorted(grid.get_node_ids())) < cfg.clients:
        if time.monotonic() - t0 > timeout:
            raise FeddfError(f"only {len(ids)} of --clients {cfg.clients} SuperNodes connected after {timeout:g} s: "
                             f"start one flower-supernode per partition (or raise node-timeout)")
        time.sleep(0.5)
    msgs = [Message(RecordDict({"query": ConfigRecord({"what": "node"})}), dst_node_id=n,
                    message_type=MessageType.QUERY) for n in ids]
    infos, errors = {}, []
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        if reply.has_error():
            errors.append(f"{reply.metadata.src_node_id}: {reply.error.reason}")
        else:
            infos[reply.metadata.src_node_id] = dict(reply.content["node"])
    if errors:
        raise FeddfError(f"SuperNodes failed the node query ({'; '.join(errors)[:300]}): check their logs")
    return check_nodes(cfg, infos)


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    poll = float(rc.get("poll-interval", 0.2))
    run(PollingGrid(grid, poll), load_config(str(rc.get("config-file", ""))), engine=str(rc.get("engine", "flower")),
        min_replies=int(rc.get("min-replies", 1)), node_timeout=float(rc.get("node-timeout", 120)),
        round_timeout=float(rc.get("round-timeout", 3600)), poll_interval=poll)


def run(grid: Grid, cfg, engine: str, min_replies: int = 1, node_timeout: float = 120,
        round_timeout: float = 3600, poll_interval: float = 0.2) -> None:
    """The run in cfg.out, or (cfg.resume and a checkpoint there) its continuation after the last finished round,
    with `feddf train`'s run-folder helpers: the same checkpoint.pt, so either engine resumes the other's run."""
    import dataclasses

    import flwr

    from feddf.federated.runner import _write_json, _write_outputs, checkpoint, load_checkpoint, restore
    from feddf.federated.setup import load_server_task, load_task, print_partition, print_start, print_summary
    from feddf.federated.teachers import resolve_precision
    from feddf.federated.tracking import open_trackers
    from feddf.flower.strategy import FedDF
    from feddf.flower.wire import CONFIG_KEY, TASK_KEY, config_to_json, task_to_json
    from feddf.utils import resolve_device

    from feddf.flower.options import check_flower_options

    check_flower_options(min_replies, node_timeout, round_timeout, poll_interval, cfg)
    device = resolve_device(cfg.device)
    cfg = dataclasses.replace(cfg, teacher_precision=resolve_precision(cfg.teacher_precision, device))
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    if not cfg.resume and (ckpt_path.exists() or (out / "metrics.jsonl").exists()):
        raise FeddfError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    ckpt = load_checkpoint(ckpt_path, cfg) if cfg.resume and ckpt_path.exists() else None
    local = cfg.node_local_data()  # every node brings its own data: the server loads only --server/--test-data
    # a distillation source that does not fit the task fails here, before the data
    task = load_server_task(cfg, print) if local else load_task(cfg, print)
    nodes = learn_nodes(grid, cfg, node_timeout)
    task.client_arch[:] = [nodes[k][1] for k in range(cfg.clients)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    # node-local data: what each node reported (its example count, or why it refused: one line, no path)
    reported = {k: {"node": str(nodes[k][0]), "arch": nodes[k][1], "n": None, "refused": None, "round": None}
                for k in range(cfg.clients)}

    def write_nodes() -> None:
        _write_json(out / "nodes.json", {"clients": [{"id": k, **reported[k]} for k in range(cfg.clients)]})

    if ckpt is None:
        if local:
            write_nodes()
        else:
            _write_json(out / "partition.json", task.partition_record())
        _write_json(out / "config.json", {**task.config_record(), "engine": {
            "name": engine, "flwr": flwr.__version__, "min_replies": min_replies, "poll_interval": poll_interval,
            "nodes": {str(k): str(nodes[k][0]) for k in sorted(nodes)}}})
    else:
        check_same_archs(out, task)
    print_start(task, out, print)
    if local:
        print(f"node-local data: {cfg.clients} SuperNodes, server validation {len(task.val_idx)}, test "
              f"{task.test_spec} ({len(task.test_labels)})")
    else:
        print_partition(task, print)

    def on_round(row: dict, server: dict) -> None:
        rows.append(row)
        _write_outputs(out, task, server, rows, checkpoint=checkpoint(row["round"], cfg, server, strategy.agg, rows,
                                                                     task.source))
        if local:
            for k, rec in reported.items():
                if k in row["replied"]:
                    rec.update(n=strategy.examples[k], refused=None, round=row["round"])
                elif str(k) in row["failed"]:
                    rec.update(refused=row["failed"][str(k)], round=row["round"])
            write_nodes()
        trackers.round(row, rows)
        lost = f", missing partitions {row['missing']}" if row["missing"] else ""
        print(f"round {row['round']}/{cfg.rounds}: " + " ".join(
            f"{a}={FedDF._final_acc(row, a):.4f}" for a in cfg.archs) + lost, flush=True)

    strategy = FedDF(cfg, task, {k: v[0] for k, v in nodes.items()}, device, on_round, min_replies=min_replies)
    start, rows = restore(ckpt, cfg, out, task, strategy.agg, strategy.server, print)
    strategy.offset = start  # Flower counts this run's rounds from 1: round r of the run is Flower's r - start
    sent = {CONFIG_KEY: config_to_json(cfg), **({TASK_KEY: task_to_json(task.info)} if local else {})}
    trackers = open_trackers(cfg.trackers, out, dataclasses.asdict(cfg), start)
    try:
        if start < cfg.rounds:
            strategy.start(grid, strategy.global_arrays(), num_rounds=cfg.rounds - start, timeout=round_timeout,
                           train_config=ConfigRecord(sent))
    finally:
        trackers.close()
    print_summary(rows, cfg.archs, print)


def check_same_archs(out: Path, task) -> None:
    """A resumed run's nodes must hold the architectures the run's nodes held (the rest of the split follows from the
    settings, which load_checkpoint compares)."""
    import json

    record = out / "partition.json"
    if not record.exists() and (out / "nodes.json").exists():  # a run on node-local data
        record = out / "nodes.json"
    try:
        saved = [c["arch"] for c in json.loads(record.read_text())["clients"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise FeddfError(f"--resume: {record} is missing or damaged: start a new --out") from None
    for k, (a, b) in enumerate(zip(saved, task.client_arch)):
        if a != b:
            raise FeddfError(f"--resume: partition {k} is now arch={b!r} but the run in {out} was started with "
                             f"arch={a!r}: give each SuperNode the node config it had")
