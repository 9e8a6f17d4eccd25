"""`FedDF`: Flower's FedAvg strategy with one global model per architecture and feddf's server step.

    python -m pytest -q tests/test_flower.py -k equal   # Flower and `feddf train` give the same rounds

Per round r (`Strategy.start` drives it):
  configure_train   sample the round's clients with `fusion.sample_clients` over the sorted partition ids (Flower's
                    own sampling uses random node ids and the global `random`), send each sampled node its own
                    architecture's model (one fp32 payload, wire.model_to_record) and the run's config; nodes
                    that are no longer connected are not sent anything and count as missing.
  aggregate_train   replies grouped by architecture (Flower's FedAvg refuses mixed key sets) and sorted by
                    partition id, then `fusion.fuse`: FedAvg/FedProx/FedAvgM per architecture and, for FedDF,
                    ensemble distillation into every architecture's average with best-on-validation, exactly as
                    `feddf train`. Missing or failed nodes are recorded in the round's metrics (`missing`,
                    `failed`); fewer than `min_replies` replies stop the run with one line.
The baselines (--aggregator fedavg/fedprox/fedavgm) run through the same class: `fuse` skips distillation.
"""
from __future__ import annotations

import time
from typing import Callable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from feddf.errors import FeddfError


class FedDF(FedAvg):
    """cfg: resolved TrainConfig; task: feddf Task (server side: validation/test data, distillation source);
    nodes: partition id -> Flower node id (learned with a QUERY); on_round(row, server_states) is called after
    every round (the ServerApp writes the run folder there)."""

    def __init__(self, cfg, task, nodes: dict[int, int], device, on_round: Callable[[dict, dict], None],
                 min_replies: int = 1, phase: Callable[[str, bool], None] = lambda text, force=False: None):
        super().__init__(fraction_train=cfg.fraction, fraction_evaluate=0.0, min_train_nodes=1,
                         min_available_nodes=1)
        import torch._dynamo  # noqa: F401 - the first torch.optim optimizer imports it (2-5 s): now, not in round 1

        from feddf.federated.aggregate import get_aggregator

        self.cfg, self.task, self.nodes, self.device = cfg, task, dict(nodes), device
        self.partition_of = {n: k for k, n in self.nodes.items()}
        self.on_round, self.min_replies, self.phase = on_round, min_replies, phase
        self.agg = get_aggregator(cfg.aggregator, weighting=cfg.weighting, server_momentum=cfg.server_momentum)
        self.server = {a: task.initial_state(a) for a in cfg.archs}
        self.offset = 0  # rounds a resumed run finished before: Flower's round 1 is the run's round offset + 1
        self.examples: dict[int, int] = {}  # partition id -> example count of its latest reply
        self._round: dict = {}

    # ---- helpers ---------------------------------------------------------------------------------------------
    def global_arrays(self) -> ArrayRecord:
        """Every architecture's global model in one record ('<arch>/<name>' keys): what Result.arrays holds."""
        from feddf.flower.wire import to_record

        return to_record({f"{a}/{k}": v for a in self.cfg.archs for k, v in self.server[a].items()})

    def summary(self) -> None:
        from logging import INFO

        from flwr.supercore import log

        super().summary()

        log(INFO, "\t└──> feddf: aggregator %s, archs %s, %d partitions", self.cfg.aggregator,
            ",".join(self.cfg.archs), len(self.nodes))

    # ---- train -----------------------------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid) -> list[Message]:
        from feddf.federated.fusion import sample_clients
        from feddf.flower.wire import model_to_record

        server_round += self.offset
        selected = sample_clients(self.cfg, server_round)
        alive = set(grid.get_node_ids())
        sent = [k for k in selected if self.nodes.get(k) in alive]
        self._round = {"selected": selected, "sent": sent, "t0": time.perf_counter()}
        records = {a: model_to_record(self.server[a]) for a in {self.task.client_arch[k] for k in sent}}
        # what a node downloads: its architecture's fp32 payload, the bytes `feddf train` counts
        self._download_bytes = {a: int(r["payload"].numpy().size) for a, r in records.items()}
        msgs = []
        for k in sent:
            arch = self.task.client_arch[k]
            conf = ConfigRecord({**dict(config), "server-round": server_round, "partition-id": k, "arch": arch})
            msgs.append(Message(RecordDict({self.arrayrecord_key: records[arch], self.configrecord_key: conf}),
                                dst_node_id=self.nodes[k], message_type=MessageType.TRAIN))
        self.phase(f"round {server_round}: sent to partitions {sent}", True)
        return msgs

    def aggregate_train(self, server_round: int, replies) -> tuple[ArrayRecord | None, MetricRecord | None]:
        from feddf.federated.fusion import ClientUpdate, fuse
        from feddf.federated.precision import decode
        from feddf.flower.wire import contents, payload_from_record

        server_round += self.offset
        valid, errors = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        client_seconds = time.perf_counter() - self._round["t0"]
        got: dict[int, Message] = {}
        for m in valid:
            k = self.partition_of.get(m.metadata.src_node_id)
            if k is not None and k in self._round["sent"]:
                got[k] = m
        failed = {self.partition_of.get(m.metadata.src_node_id): m.error.reason for m in errors}
        selected = self._round["selected"]
        missing = [k for k in selected if k not in got]
        if len(got) < self.min_replies:
            raise FeddfError(f"round {server_round}: {len(got)} of {len(selected)} sampled clients replied "
                             f"(missing partitions {missing}; errors: {failed or 'none'}), fewer than "
                             f"--min-replies {self.min_replies}: check the SuperNodes' logs")
        updates = []
        for k in sorted(got):  # partition order = feddf train's client order (fixes the summation order)
            arch = self.task.client_arch[k]
            blob = payload_from_record(got[k].content[self.arrayrecord_key])
            precision, state = decode(blob)  # exact: a binarised teacher computes with the client's own weights
            state = {name: v.to(self.server[arch][name].dtype) for name, v in state.items()}
            reply = got[k].content["metrics"]
            n = self.examples[k] = int(reply["num-examples"])
            counts = [int(c) for c in reply["class-counts"]] if "class-counts" in reply else None
            updates.append(ClientUpdate(k, arch, self.task.new_model(arch, state).to(self.device), n, precision,
                                        len(blob), self._download_bytes[arch], class_counts=counts))
        t1 = time.perf_counter()
        fused = fuse(server_round, self.cfg, self.task, self.agg, self.server, updates, self.device, phase=self.phase)
        self.server.update(fused.server)
        row = {"round": server_round, **fused.metrics, "client_seconds": round(client_seconds, 3),
               "distill_seconds": round(time.perf_counter() - t1, 3), "server_seconds": fused.seconds,
               "selected": selected,
               "replied": sorted(got), "missing": missing,
               "failed": {str(k): v for k, v in failed.items() if k is not None},
               "received": {str(k): contents(got[k]) for k in sorted(got)},
               "node_seconds": {str(k): {key.split("-")[0]: round(float(got[k].content["metrics"][key]), 3)
                                         for key in ("process-seconds", "load-seconds", "train-seconds")
                                         if key in got[k].content["metrics"]} for k in sorted(got)}}
        self.on_round(row, self.server)
        metrics = MetricRecord({"replies": len(got), "missing": len(missing),
                                **{f"acc-{a}": float(self._final_acc(fused.metrics, a)) for a in self.cfg.archs}})
        return self.global_arrays(), metrics

    @staticmethod
    def _final_acc(metrics: dict, arch: str) -> float:
        acc = metrics["acc"][arch]
        return acc["distilled"] if acc["distilled"] is not None else acc["fedavg"]
