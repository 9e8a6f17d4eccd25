"""The fixed part of a training run (`Task`): data, server validation split, client partition, architectures,
distillation source; plus the run-folder records and the printed tables.

    python -c "from feddf.federated.config import TrainConfig; from feddf.federated.setup import load_task; \
t = load_task(TrainConfig(train_limit=600, clients=4, arch='cnn', distill_source='noise').resolved()); \
print(t.hist)"

Order of operations (all seeded by --seed): optional --train-limit subset of the training split -> class-stratified
--val-fraction kept by the server -> the rest partitioned among --clients -> client i trains archs[i * A // n] at
precision precisions[i * P // n] (--client-precision).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from feddf.errors import FeddfError
from feddf.federated import partition as part
from feddf.federated.client import accuracy, make_transform
from feddf.federated.config import TrainConfig
from feddf.federated.synth import is_synth

# settings that may differ between a run and its --resume (they do not change the results)
RESUMABLE = {"rounds", "device", "prefetch", "progress", "resume", "out", "cache_dir", "client_engine", "trackers"}


# What a run folder whose config predates a key did, where that is not the current default: such a run resumes only
# with the old behaviour asked for explicitly (the refusal names the key).
PREDATED = {"distill_bn": "train", "logit_adjust": 0.0, "client_kernels": "legacy", "server_kernels": "legacy",
            "local_loss": "ce", "distill_pool": 0}
# keys left out of a run folder's identity (runner.run_settings) while they hold these defaults, so that folders made
# before the keys existed keep their config hash and resume
LATE_DEFAULTS = {"image_column": None, "label_column": None, "server_data": None, "test_data": None,
                 "distill_pool": 0, "save_pool": None, "synth_checkpoint": None, "synth_steps": 20, "synth_lr": 1e-3,
                 "synth_embed_lr": 3e-2, "synth_batch_size": 64, "synth_ce": 1.0, "synth_bn": 1.0, "synth_adv": 1.0,
                 "synth_div": 1.0, "synth_labels": "uniform", "synth_memory": 0,
                 "synth_mix": 0.0}


def same_run(saved: dict, now: dict) -> str:
    """'' when two resolved configs describe the same run, else the first differing keys. A key a run folder's
    config predates (e.g. client_precision) counts as its default, or as what it did then (PREDATED)."""
    defaults = {**dataclasses.asdict(TrainConfig()), **PREDATED}
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    diff = [k for k in sorted(set(saved) | set(now)) if k not in RESUMABLE and saved.get(k) != now.get(k)]
    return ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff[:3])


@dataclasses.dataclass
class Task:
    cfg: TrainConfig
    info: object                     # feddf.data DatasetInfo
    train_images: torch.Tensor       # uint8 (N, C, H, W): the (limited) training split
    train_labels: torch.Tensor       # int64 (N,)
    val_idx: np.ndarray
    client_indices: list             # per client: positions into train_*
    client_arch: list
    hist: np.ndarray                 # (clients, K)
    test_images: torch.Tensor
    test_labels: torch.Tensor
    test_spec: str
    data_files: list
    source: object | None
    param_names: dict
    client_precision: list | None = None  # per client: fp32, bf16, fp16, binary (feddf.federated.precision)

    def __post_init__(self):
        self.eval_tf = make_transform(self.info, "none")
        self.val_images = self.train_images[self.val_idx]
        self.val_labels = self.train_labels[self.val_idx]
        self._init = {}
        self._probes = {}
        if self.client_precision is None:
            self.client_precision = ["fp32"] * len(self.client_indices)

    # ---- models ----------------------------------------------------------------------------------------------
    def initial_state(self, arch: str) -> dict:
        """Round-0 weights: built under a fixed seed so every run with --seed S starts from the same model."""
        if arch not in self._init:
            from feddf.models import get_model

            torch.manual_seed(self.cfg.seed)
            m = get_model(arch, self.info.num_classes, self.info.channels, self.cfg.norm)
            self._init[arch] = {k: v.detach().clone() for k, v in m.state_dict().items()}
        return self._init[arch]

    def new_model(self, arch: str, state: dict) -> torch.nn.Module:
        from feddf.models import get_model

        m = get_model(arch, self.info.num_classes, self.info.channels, self.cfg.norm)
        m.load_state_dict(state)
        return m

    def kernel_probe(self, arch: str):
        """What --client-kernels portable may do with `arch` (feddf.federated.kernels.probe), decided once."""
        if arch not in self._probes:
            from feddf.federated.kernels import probe

            shape = (self.info.channels, self.info.size, self.info.size)
            self._probes[arch] = probe(lambda: self.new_model(arch, self.initial_state(arch)), shape)
        return self._probes[arch]

    def save_model(self, path: Path, arch: str, state: dict) -> None:
        from feddf.models import save_classifier

        save_classifier(path, self.new_model(arch, state), arch=arch, num_classes=self.info.num_classes,
                        in_channels=self.info.channels, norm=self.cfg.norm, mean=self.info.mean, std=self.info.std,
                        resolution=self.info.size, class_names=list(self.info.class_names))

    # ---- evaluation ------------------------------------------------------------------------------------------
    def test_logits(self, models: list, device, kernels: str | None = None, known: list | None = None) -> torch.Tensor:
        """(T, N, K) logits of `models` on the test split with --server-kernels `kernels` (evaluation.py; None: the
        task's own config; fusion.fuse passes its round's, so a caller may fuse one task under several configs).
        `known[i]`: (kernels, logits) already computed for models[i] (ClientUpdate.test_logits), used when its
        kernels are these: a model's logits on a chunk do not depend on the other models or on the thread."""
        kernels = kernels or self.cfg.server_kernels
        have = {i: k[1] for i, k in enumerate(known or []) if k is not None and k[0] == kernels}
        todo = [i for i in range(len(models)) if i not in have]
        fresh = self._logits([models[i] for i in todo], self.test_images, device, kernels) if todo else None
        if not have:
            return fresh
        rows = dict(have, **{i: fresh[j] for j, i in enumerate(todo)})
        return torch.stack([rows[i] for i in range(len(models))])

    def test_accuracy(self, model, device, kernels: str | None = None) -> float:
        return accuracy(self._logits([model], self.test_images, device, kernels)[0], self.test_labels)

    def val_accuracy(self, model, device, kernels: str | None = None) -> float:
        return accuracy(self._logits([model], self.val_images, device, kernels)[0], self.val_labels)

    def _logits(self, models: list, images: torch.Tensor, device, kernels: str | None) -> torch.Tensor:
        from feddf.federated.evaluation import eval_logits

        return eval_logits(models, images, self.eval_tf, self.cfg.eval_batch_size, device,
                           kernels or self.cfg.server_kernels)

    # ---- distillation batches --------------------------------------------------------------------------------
    def distill_batches(self, cfg: TrainConfig, seed: int, device, source=None):
        """(TransferStream of (ids | None, normalised float batch on device), TargetCache | None) for one round.

        Targets are reused (TargetCache) only for an in-memory source whose batches are neither augmented nor mixed:
        an augmented or mixed sample is a new sample. Selection and mixup: feddf.federated.transfer. `source`: the
        round's pool (pool.py) instead of the task's source."""
        from feddf.federated.distill import TargetCache
        from feddf.federated.transfer import TransferStream

        source = self.source if source is None else source
        reuse = (cfg.distill_augment == "none" and not cfg.distill_mixup
                 and getattr(source, "pool", None) is not None)
        n = source.n if reuse else 0
        cache = TargetCache(n, self.info.num_classes) if reuse and n * self.info.num_classes <= 50_000_000 else None
        stream = TransferStream(source, make_transform(self.info, cfg.distill_augment),
                                make_transform(self.info, "none"), batch_size=cfg.distill_batch_size, seed=seed,
                                device=device, num_classes=self.info.num_classes, select=cfg.distill_select,
                                fraction=cfg.select_fraction, mixup_alpha=cfg.distill_mixup, cache=cache)
        return stream, cache

    # ---- records ---------------------------------------------------------------------------------------------
    def partition_record(self) -> dict:
        val_hist = np.bincount(self.train_labels[self.val_idx].numpy(), minlength=self.info.num_classes)
        return {"partition": self.cfg.partition, "alpha": self.cfg.alpha, "seed": self.cfg.seed,
                "class_names": list(self.info.class_names), "n_train": int(len(self.train_labels)),
                "clients": [{"id": k, "arch": self.client_arch[k], "precision": self.client_precision[k],
                             "n": int(len(ix)),
                             "histogram": [int(v) for v in self.hist[k]]}
                            for k, ix in enumerate(self.client_indices)],
                "server_val": {"n": int(len(self.val_idx)), "histogram": [int(v) for v in val_hist]},
                "test": {"spec": self.test_spec, "n": int(len(self.test_labels))}}

    def config_record(self) -> dict:
        from feddf.utils import sha256_file, versions

        return {**dataclasses.asdict(self.cfg), "versions": versions(),
                "sends": {"model": True, "example_count": True, "label_counts": self.cfg.server_uses_label_counts()},
                "hashes": {"data": {f: sha256_file(f) for f in self.data_files if Path(f).is_file()},
                           "source": self.source.describe() if self.source is not None else None},
                "test_spec": self.test_spec, "num_classes": self.info.num_classes,
                "channels": self.info.channels, "resolution": self.info.size, **_byo_record(self)}


def _byo_record(task: Task) -> dict:
    """What a bring-your-own dataset/architecture derived: class names, statistics, module file hashes."""
    from feddf.models import describe_arch

    i = task.info
    return {"dataset_info": {"class_names": list(i.class_names), "mean": list(i.mean), "std": list(i.std),
                             **(i.details or {})},
            "arch_info": {a: describe_arch(a) for a in task.cfg.archs}}


def task_source(cfg: TrainConfig, info, memory_bytes: int, progress: bool):
    """The run's --distill-source for a task of `info`'s channels and resolution: the server's generator of
    `synth:NAME` (pool.SynthSource) or a cache / noise source (sources.resolve_source); one line when it cannot be."""
    from feddf.federated.pool import SynthSource
    from feddf.federated.sources import resolve_source
    from feddf.federated.synth import PREFIX, SynthSpec

    if not is_synth(cfg.distill_source):
        return resolve_source(cfg.distill_source, info.channels, info.size, cache=cfg.cache, cache_dir=cfg.cache_dir,
                              resize=cfg.source_resize, memory_bytes=memory_bytes, progress=progress)

    spec = SynthSpec(cfg.synth_steps, cfg.synth_lr, cfg.synth_embed_lr, cfg.synth_batch_size, cfg.synth_ce,
                     cfg.synth_bn, cfg.synth_adv, cfg.synth_div, cfg.synth_labels, cfg.temperature, cfg.synth_memory,
                     cfg.synth_mix)
    return SynthSource(cfg.distill_source[len(PREFIX):], info, spec, cfg.distill_pool, cfg.seed, cfg.synth_checkpoint)


def load_task(cfg: TrainConfig, log: Callable[[str], None] = print, source: bool = True) -> Task:
    """The run's Task; source=False skips the distillation source (a Flower client only trains locally)."""
    from feddf.data import dataset_info, get_dataset

    info = dataset_info(cfg.dataset, cfg.columns())
    source = _source(cfg, info) if source else None  # first: a bad cache fails before the data
    train = get_dataset(f"{cfg.dataset}:train", cfg.data_root, cfg.columns())
    test = get_dataset(f"{cfg.dataset}:{cfg.test_split}", cfg.data_root, cfg.columns())
    info = train.info
    images, labels = train.images, train.labels
    if cfg.train_limit is not None and cfg.train_limit < len(labels):
        keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(labels))[:cfg.train_limit])
        images, labels = images[keep], labels[keep]
    if (labels < 0).any():
        raise FeddfError(f"{cfg.dataset}:train has unlabelled images: federated training needs a labelled split")
    test_images, test_labels = test.images, test.labels
    if cfg.test_limit is not None:
        test_images, test_labels = test_images[:cfg.test_limit], test_labels[:cfg.test_limit]
    pool, val_idx = part.split_validation(labels.numpy(), cfg.val_fraction, cfg.seed)
    if len(val_idx) == 0 and (cfg.aggregator == "feddf" or cfg.drop_worst):  # its accuracy would be NaN
        raise FeddfError(f"the server's validation split is empty: --val-fraction {cfg.val_fraction:g} of the "
                         f"{len(labels)} training images rounds to 0 images in every class, and distillation (or "
                         f"--drop-worst) selects models by validation accuracy; raise --train-limit (a class needs "
                         f"at least {math.ceil(0.5 / cfg.val_fraction)} images) or --val-fraction")
    parts = part.partition(cfg.partition, labels.numpy()[pool], cfg.clients, cfg.alpha, cfg.seed)
    client_indices = [pool[p] for p in parts]
    hist = part.class_histograms(client_indices, labels.numpy(), info.num_classes)
    return Task(cfg=cfg, info=info, train_images=images, train_labels=labels, val_idx=val_idx,
                client_indices=client_indices, client_arch=part.assign_archs(cfg.clients, cfg.archs), hist=hist,
                test_images=test_images, test_labels=test_labels, test_spec=test.spec,
                data_files=list(train.source_files) + list(test.source_files), source=source,
                param_names=_param_names(cfg, info), client_precision=client_precisions(cfg))


def load_server_task(cfg: TrainConfig, log: Callable[[str], None] = print) -> Task:
    """The server's Task of a run on node-local data (cfg.server_data): its validation set is all of --server-data,
    its test set --test-data (else --server-data again), and it holds no client's data: no partition (each client
    slot is empty), the nodes report their example counts with their models."""
    from feddf.data import get_dataset

    val = get_dataset(cfg.server_data, cfg.data_root)
    info = val.info
    source = _source(cfg, info)
    test = get_dataset(cfg.test_data, cfg.data_root) if cfg.test_data else val
    for flag, s in (("--server-data", val), ("--test-data", test)):
        bad = int(((s.labels < 0) | (s.labels >= info.num_classes)).sum())
        if bad or not len(s):
            raise FeddfError(f"{flag} {s.spec}: {bad} of {len(s)} images have no label in 0..{info.num_classes - 1}:"
                             f" the server validates and tests on labelled images of the task's classes")
    if tuple(test.images.shape[1:]) != tuple(val.images.shape[1:]):
        raise FeddfError(f"--test-data {test.spec}: images are {tuple(test.images.shape[1:])} but --server-data's "
                         f"are {tuple(val.images.shape[1:])}")
    test_images, test_labels = test.images[:cfg.test_limit], test.labels[:cfg.test_limit]
    empty = np.zeros(0, dtype=np.int64)
    return Task(cfg=cfg, info=info, train_images=val.images, train_labels=val.labels,
                val_idx=np.arange(len(val)), client_indices=[empty] * cfg.clients,
                client_arch=part.assign_archs(cfg.clients, cfg.archs),
                hist=np.zeros((cfg.clients, info.num_classes), dtype=np.int64), test_images=test_images,
                test_labels=test_labels, test_spec=test.spec if cfg.test_data else f"{val.spec} (no --test-data)",
                data_files=sorted(set(val.source_files) | set(test.source_files)), source=source,
                param_names=_param_names(cfg, info), client_precision=client_precisions(cfg))


def _source(cfg: TrainConfig, info):
    """The distillation source of a FedDF run (None for the baselines), checked against the task."""
    if cfg.aggregator != "feddf":
        return None
    return task_source(cfg, info, cfg.source_memory_mb << 20, cfg.progress)


def client_precisions(cfg: TrainConfig) -> list[str]:
    from feddf.federated.precision import parse_precisions

    return part.assign_blocks(cfg.clients, parse_precisions(cfg.client_precision))


def _param_names(cfg: TrainConfig, info) -> dict:
    """arch -> its parameter names, after one forward pass (a model returning a tuple/dict fails here, in one line)."""
    from feddf.models import check_output, get_model

    out = {}
    for a in cfg.archs:
        m = get_model(a, info.num_classes, info.channels, cfg.norm)
        check_output(m, a, info.num_classes, info.channels, info.size)
        out[a] = {n for n, _ in m.named_parameters()}
    return out


def source_line(task: Task) -> str:
    """One line naming the run's transfer set as resolved: kind, path or name, images (synth: generator, pool)."""
    cfg, src = task.cfg, task.source
    if src is None:
        return f"transfer set: none ({cfg.aggregator} does not distil)"
    d = src.describe()
    pool = f", a pool of {cfg.distill_pool} drawn each round" if cfg.distill_pool and d["kind"] != "synth" else ""
    if d["kind"] == "noise":
        return (f"transfer set: noise (uniform random {d['channels']}x{d['resolution']}x{d['resolution']} images, "
                f"new every batch{pool})")
    if d["kind"] == "synth":
        return (f"transfer set: {d['name']} (server-side generator {d['generator']}, trained {cfg.synth_steps} "
                f"steps a round against the ensemble; a pool of {d['pool']} images a round, labels {cfg.synth_labels})")
    origin = src.info.attrs.get("generator") or src.info.source
    where = "in memory" if d["in_memory"] else "streamed from disk"
    conv = f", converted to {task.info.channels}x{task.info.size}px" if d["converted"] else ""
    named = "" if cfg.distill_source.endswith(".h5") else f"{cfg.distill_source} = "  # gan, cifar100, ...: the file
    return (f"transfer set: {named}{d['path']} ({src.info.kind} cache of {origin}), {d['n']} images, "
            f"{where}{conv}{pool}")


def teacher_warning(cfg: TrainConfig, teachers: int, why: str) -> str | None:
    """The one-teacher warning: FedDF with fewer than 2 client models to distil from is FedAvg."""
    if cfg.aggregator != "feddf" or teachers >= 2:
        return None
    return (f"warning: {why} leaves {teachers} teacher: its ensemble is the FedAvg model itself, so FedDF "
            f"gains nothing over FedAvg; raise --clients or --fraction")


def run_warnings(task: Task) -> list[str]:
    """One-line warnings about a run that will not do what its settings suggest (printed once, at the start)."""
    from feddf.federated.fusion import participants

    cfg = task.cfg
    n = participants(cfg)
    out = [teacher_warning(cfg, n, f"each round training {n} of {cfg.clients} clients (--fraction {cfg.fraction:g})")]
    empty = [k for k, ix in enumerate(task.client_indices) if len(ix) == 0]
    if empty and not cfg.node_local_data():
        out.append(f"warning: the partition leaves {len(empty)} client(s) without data ({_ids(empty)}): they send "
                   f"back the model they received; use fewer --clients, more data or a larger --alpha")
    return [w for w in out if w]


def _ids(ids: list[int]) -> str:
    return "clients " + ", ".join(map(str, ids[:5])) + (", ..." if len(ids) > 5 else "")


def print_start(task: Task, out, log: Callable[[str], None]) -> None:
    """The lines a run starts with: its folder, its transfer set, and any warning about its settings."""
    log(f"run folder: {out}")
    log(source_line(task))
    if task.cfg.server_uses_label_counts():  # said once; config.json records it as sends.label_counts
        log("label counts: every client sends its label counts to the server with its model (--logit-adjust > 0 or "
            "--synth-labels prior); the default recipe keeps them on the clients")
    for w in run_warnings(task):
        log(w)


def print_partition(task: Task, log: Callable[[str], None]) -> None:
    """Client class histograms as a table (one row per client, one column per class)."""
    k = task.info.num_classes
    cols = range(k) if k <= 20 else []
    mixed = set(task.client_precision) != {"fp32"}  # a precision column only when some client is not fp32
    head = f"{'client':>6} {'arch':>12} {'n':>6} " + " ".join(f"{c:>5}" for c in cols) + (" precision" if mixed else "")
    log(f"partition {task.cfg.partition} alpha={task.cfg.alpha:g}: {len(task.client_indices)} clients, server "
        f"validation {len(task.val_idx)}, test {task.test_spec} ({len(task.test_labels)})")
    log(head)
    for i, ix in enumerate(task.client_indices):
        prec = f" {task.client_precision[i]}" if mixed else ""
        log(f"{i:>6} {task.client_arch[i]:>12} {len(ix):>6} " + " ".join(f"{task.hist[i][c]:>5}" for c in cols) + prec)


def print_summary(rows: list[dict], archs: list[str], log: Callable[[str], None]) -> None:
    """Final table: one row per round with each architecture's test accuracy (a fraction, as in metrics.jsonl and
    `feddf compare`) after FedAvg and after distillation; '-' where a round has no such value."""
    if not rows:
        return
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    head = "round " + " ".join(f"{a + ' avg':>14} {a + ' df':>14}" for a in archs) + "  ensemble  best_step"
    log("test accuracy (fraction of 1) per round; avg = after FedAvg, df = after distillation")
    log(head + "  clients_s  server_s")
    for r in rows:
        cells = " ".join(f"{fmt(r['acc'][a]['fedavg']):>14} {fmt(r['acc'][a]['distilled']):>14}" for a in archs)
        best = ",".join("-" if r["best_step"][a] is None else str(r["best_step"][a]) for a in archs)
        log(f"{r['round']:>5} {cells}  {fmt(r['ensemble_acc']):>8}  {best:>9}  {r.get('client_seconds', 0):9.1f}  "
            f"{r.get('distill_seconds', 0):8.1f}")
