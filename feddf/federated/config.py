"""`TrainConfig`: every knob of `feddf train`, its default and where the default comes from; TOML loading.

    python -c "from feddf.federated.config import TrainConfig; print(TrainConfig().resolved())"

Defaults follow the FedDF paper's released commands (github.com/epfml/federated-learning-public-code, FedDF README:
CIFAR-10 / ResNet-8, 20 clients, alpha 1, 40 local epochs, 100 rounds, SGD lr 0.1 batch 64 without momentum, val
ratio 0.1, manual_seed 7; FedDF: avg_logits, 10^4 distillation batches, eval every 100, early stop after 1000) and
the solver's defaults in `noise_knowledge_transfer.py` (Adam 1e-3, cosine annealing, T = 1, clip 5). The dataset
default is fashion-mnist because it is the dataset this toolkit ships a GAN pipeline for. docs/training.md has the
full table. A TOML file (`--config`) holds the same keys (dashes or underscores); command-line flags override it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from feddf.checks import check_range, check_seed, check_types
from feddf.errors import FeddfError

AGGREGATOR_NAMES = ("feddf", "fedavg", "fedprox", "fedavgm")
AUGMENT_NAMES = ("crop-flip", "flip", "none")
DISTILL_BN = ("train", "running")  # the students' BatchNorm mode while distilling (distill.py)
CLIENT_ENGINES = ("batched", "sequential")  # how a round's clients share the machine (engines.py)


@dataclass
class TrainConfig:
    # task and data
    dataset: str = "fashion-mnist"
    data_root: str | None = None          # feddf.data's default root when None
    test_split: str | None = None         # None -> "test[5000:]" for fashion-mnist (test[:5000] trains the GAN)
    train_limit: int | None = None        # use a seeded random subset of the training split (quick runs, tests)
    test_limit: int | None = None         # evaluate on the first N images of the test split
    val_fraction: float = 0.1             # paper: --val_data_ratio 0.1 (the server's labelled validation split)
    image_column: str | None = None       # hf: datasets: the image / label column (None: detected, data/hf.py)
    label_column: str | None = None
    # node-local data (Flower only, docs/flower.md): every SuperNode trains on its own data= and the server holds
    # only these; the task (channels, resolution, classes) is --server-data's, which also becomes `dataset`
    server_data: str | None = None        # the server's labelled validation set (FedDF validates, early-stops on it)
    test_data: str | None = None          # the server's test set; None -> accuracies on --server-data
    # models
    arch: str = "resnet8"                 # paper: --arch resnet8
    archs: list[str] | None = None        # heterogeneous clients, e.g. [resnet20, resnet32, shufflenetv2]
    norm: str = "bn"
    # federation
    aggregator: str = "feddf"
    weighting: str = "size"               # FedAvg weights: client data size (McMahan et al.); "uniform" = paper code
    partition: str = "dirichlet-balanced"  # paper code's non_iid_dirichlet; "dirichlet" = the common Hsu et al. split
    clients: int = 20                     # paper: --n_clients 20
    alpha: float = 1.0                    # paper: --non_iid_alpha 1
    fraction: float = 0.4                 # paper README: participation ratio 0.4
    rounds: int = 100                     # paper: --n_comm_rounds 100
    # clients
    local_epochs: int = 40                # paper: --local_n_epochs 40
    local_lr: float = 0.1                 # paper: --lr 0.1, no decay
    local_momentum: float = 0.0           # paper: --momentum_factor 0
    weight_decay: float = 0.0             # paper: --weight_decay 0
    batch_size: int = 64                  # paper: --batch_size 64
    augment: str = "crop-flip"            # paper code's CIFAR train transform (random crop 4 px + flip)
    prox_mu: float | None = None          # FedProx mu; None -> 0.01 for fedprox, 0 otherwise
    local_loss: str | None = None         # losses.py: ce (paper) | balanced-softmax (Ren+ 2020) | fedlc (Zhang+ 2022);
    #                                       None -> balanced-softmax under feddf (counts stay on the client), else ce
    fedlc_tau: float = 1.0                # FedLC's calibration strength tau (--local-loss fedlc)
    client_precision: str = "fp32"        # fp32|bf16|fp16|binary, or a comma list: client i gets p[i * P // n]
    server_momentum: float | None = None  # FedAvgM beta; None -> 0.9 for fedavgm
    client_engine: str = "batched"        # engines.py: clients trained together (one per core) or one at a time
    client_kernels: str = "portable"      # kernels.py: portable (1 thread a client, channels_last) | legacy
    server_kernels: str = "fused"         # evaluation.py: fused (portable + BN folded, exact pools) | portable | legacy
    # FedDF distillation
    distill_source: str = "gan"
    cache: str | None = None
    cache_dir: str = "cache"
    source_resize: bool = False
    source_memory_mb: int = 1024          # caches up to this size are held in memory (enables target reuse)
    distill_steps: int = 10000            # paper: total_n_server_pseudo_batches=10000
    distill_batch_size: int = 64          # paper: the distillation loader uses --batch_size 64
    distill_lr: float = 1e-3              # paper: student_learning_rate 1e-3 (Adam, cosine annealing)
    temperature: float = 1.0              # paper: KL temperature 1
    ensemble: str = "avg-logits"          # paper: update_student_scheme=avg_logits
    logit_adjust: float = 0.0             # teachers' logits minus tau * log(their client's label prior); 0 = paper
    #                                       (and the private default: tau > 0 makes clients send their label counts)
    eval_every: int = 100                 # paper: eval_batches_freq=100
    patience: int = 1000                  # paper: early_stopping_server_batches=1000
    drop_worst: bool = False              # paper: server_teaching_scheme=drop_worst
    ensemble_fedavg: bool = False         # the FedAvg model(s) join the teachers (FedBE, Chen & Chao 2021)
    distill_augment: str = "none"         # see docs/training.md: "none" lets targets of a finite source be reused
    distill_mixup: float = 0.0            # Beta(a, a) mixup of transfer batches, teachers see the mix; 0 = off
    distill_select: str = "none"          # per-round selection by the ensemble: none | low-entropy | hard
    select_fraction: float = 0.5          # share of the transfer samples kept by --distill-select
    distill_bn: str = "running"           # students' BatchNorm while distilling: running (keep the FedAvg start's
    #                                       statistics; docs/results.md, transfer-set ablation) | train (paper code: re-estimated)
    teacher_precision: str = "auto"       # bf16 where native (AVX512-BF16/AMX CPUs, sm80+ GPUs), else fp32
    compile_teachers: bool = False
    prefetch: int = 16                    # batches whose teacher targets are computed ahead, in a thread
    #                                       (enough to keep the teachers busy through a validation pass)
    distill_pool: int | None = None       # images per round's transfer pool (pool.py); None -> 2000 for synth:, else
    #                                       0 (the whole source: a cache in memory, or the stream)
    save_pool: str | None = None          # write each round's pool as a feddf cache in this folder
    # server-side synthesis (--distill-source synth:NAME, synth.py): defaults of DENSE (Zhang et al. 2022) and FedGen
    synth_checkpoint: str | None = None   # a DCGAN checkpoint for synth:dcgan
    synth_steps: int = 20                 # generator steps per round (DENSE: 30 per synthesis batch; CPU-sized)
    synth_lr: float = 1e-3                # DENSE lr_g
    synth_embed_lr: float = 3e-2          # the class embedding added to the noise (it starts at zero)
    synth_batch_size: int = 64
    synth_ce: float = 1.0                 # DENSE --oh
    synth_bn: float = 1.0                 # DENSE --bn
    synth_adv: float = 1.0                # DENSE --adv
    synth_div: float = 1.0                # FedGen / FedFTG diversity weight
    synth_labels: str = "uniform"         # uniform | prior (the clients' label counts: sent to the server)
    synth_memory: int = 0                 # earlier rounds' pools distilled on beside the new one (DENSE's memory)
    synth_mix: float = 0.0                # share of synthesised samples asked for a two-class mixture
    # run
    seed: int = 7                         # paper: --manual_seed 7
    device: str = "auto"
    eval_batch_size: int = 500
    out: str | None = None                # None -> runs/<dataset>-<archs>-<aggregator>[-<source>]-s<seed>
    resume: bool = False
    progress: bool = True
    trackers: list[str] | None = None     # --log: tensorboard, csv, wandb (tracking.py)

    # ------------------------------------------------------------------------------------------------------------
    def arch_list(self) -> list[str]:
        return list(self.archs) if self.archs else [self.arch]

    def columns(self) -> tuple:
        return (self.image_column, self.label_column)

    def resolved(self) -> "TrainConfig":
        """A validated copy with every None default filled in (what config.json records)."""
        from feddf.federated.precision import parse_precisions

        c = dataclasses.replace(self)
        c.check_values()  # first: a mistyped value must not reach the registry look-ups
        c._node_local_data()
        c.validate()
        if c.archs:
            c.arch = c.archs[0]
        c.archs = c.arch_list()
        c.client_precision = ",".join(parse_precisions(c.client_precision))
        if c.test_split is None:
            c.test_split = "test[5000:]" if c.dataset == "fashion-mnist" else "test"
        if c.prox_mu is None:
            c.prox_mu = 0.01 if c.aggregator == "fedprox" else 0.0
        if c.local_loss is None:  # docs/training.md, "What leaves a client": the private recipe for FedDF
            c.local_loss = "balanced-softmax" if c.aggregator == "feddf" else "ce"
        if c.server_momentum is None:
            c.server_momentum = 0.9 if c.aggregator == "fedavgm" else 0.0
        if c.distill_pool is None:
            from feddf.federated.synth import is_synth

            c.distill_pool = 2000 if is_synth(c.distill_source) else 0
        if c.out is None:
            src = f"-{Path(c.distill_source).stem}" if c.aggregator == "feddf" else ""
            archs = "+".join(map(_slug, c.archs))
            prec = "" if c.client_precision == "fp32" else "-" + c.client_precision.replace(",", "+")
            c.out = f"runs/{_slug(c.dataset)}-{archs}{prec}-{c.aggregator}{src}-a{c.alpha:g}-s{c.seed}"
        return c

    def _node_local_data(self) -> None:
        """--server-data/--test-data: absolute specs (the ServerApp runs in Flower's app folder), and `dataset`
        becomes --server-data, the task's source; settings that only describe a central split are refused."""
        from feddf.data import byo

        def absolute(spec: str) -> str:
            return str(byo.parse(spec)) if byo.is_byo(spec) else spec

        if self.server_data is None:
            if self.test_data is not None:
                raise FeddfError(f"--test-data {self.test_data}: it goes with --server-data SPEC (node-local data); "
                                 f"a split of --dataset uses --test-split")
            return
        from feddf.data import check_dataset

        for flag, spec in (("--server-data", self.server_data), ("--test-data", self.test_data)):
            if spec is not None:
                check_dataset(spec, flag)
        self.server_data = absolute(self.server_data)
        if self.dataset not in (TrainConfig.dataset, self.server_data):
            raise FeddfError(f"--dataset {self.dataset} --server-data {self.server_data}: with node-local data the "
                             f"task comes from --server-data; drop --dataset")
        if self.train_limit is not None:
            raise FeddfError(f"--train-limit {self.train_limit}: with --server-data every node trains on all of "
                             f"its own data=; drop --train-limit")
        self.dataset = self.server_data
        self.test_data = absolute(self.test_data) if self.test_data is not None else None

    def node_local_data(self) -> bool:
        """Whether every node brings its own data (--server-data) instead of a partition of --dataset."""
        return self.server_data is not None

    def validate(self) -> None:
        from feddf.data import DATASETS, check_dataset, data_root
        from feddf.federated.kernels import KERNELS, SERVER_KERNELS
        from feddf.federated.losses import LOCAL_LOSSES
        from feddf.federated.partition import ALL_PARTITIONERS as PARTITIONERS
        from feddf.federated.teachers import ENSEMBLES, PRECISIONS
        from feddf.models import MODELS, check_arch

        def bad(flag, value, fix):
            raise FeddfError(f"--{flag} {value}: {fix}")

        for spec in (self.dataset, self.test_data):
            if spec is not None and spec not in DATASETS:
                check_dataset(spec)  # folder:/npz:/cache: sets (one line when bad), else an unknown name
        if self.data_root is not None:
            data_root(self.data_root)  # an existing folder (or the default root): one line before any work
        for a in self.arch_list():
            if a not in MODELS:
                check_arch(a)  # pkg.module:factory / timm:NAME (one line when bad), else an unknown name
        if self.archs is not None and len(set(self.archs)) != len(self.archs):
            bad("archs", ",".join(self.archs), "list each architecture once")
        if self.aggregator not in AGGREGATOR_NAMES:
            bad("aggregator", repr(self.aggregator), f"choose one of {', '.join(AGGREGATOR_NAMES)}")
        if self.aggregator != "feddf" and len(self.arch_list()) > 1:
            bad("archs", ",".join(self.arch_list()), "several architectures can only be fused with --aggregator feddf")
        for flag, v, choices in (("weighting", self.weighting, ("size", "uniform")),
                                 ("partition", self.partition, tuple(PARTITIONERS)),
                                 ("ensemble", self.ensemble, ENSEMBLES), ("augment", self.augment, AUGMENT_NAMES),
                                 ("distill-augment", self.distill_augment, AUGMENT_NAMES),
                                 ("distill-bn", self.distill_bn, DISTILL_BN),
                                 ("client-engine", self.client_engine, CLIENT_ENGINES),
                                 ("local-loss", self.local_loss or "ce", LOCAL_LOSSES),  # None: per aggregator
                                 ("client-kernels", self.client_kernels, KERNELS),
                                 ("server-kernels", self.server_kernels, SERVER_KERNELS),
                                 ("teacher-precision", self.teacher_precision, ("auto", *PRECISIONS))):
            if v not in choices:
                bad(flag, repr(v), f"choose one of {', '.join(choices)}")
        self.check_values()  # types, finiteness, ranges, seeds (also run first by resolved(), before the names)
        from feddf.federated.tracking import check_trackers

        check_trackers(self.trackers)

    def check_values(self) -> None:
        """Types, finiteness, ranges and seeds of every field (TOML, CLI and Python callers alike); needs no registry
        and no torch."""
        def bad(flag, value, fix):
            raise FeddfError(f"--{flag} {value}: {fix}")

        check_types(self)
        check_range("--alpha", self.alpha, lo=0, lo_open=True,
                    fix="the Dirichlet concentration, e.g. 1.0; 0.1 is very non-iid")
        check_range("--fraction", self.fraction, lo=0, hi=1, lo_open=True,
                    fix="the share of clients per round, e.g. 0.4")
        check_range("--val-fraction", self.val_fraction, lo=0, hi=1, hi_open=True, fix="the paper uses 0.1")
        if (self.aggregator == "feddf" or self.drop_worst) and self.val_fraction == 0:
            bad("val-fraction", 0, "FedDF early stopping and --drop-worst need the server's validation split; "
                                   "use e.g. 0.1")
        for flag, v in (("clients", self.clients), ("rounds", self.rounds), ("local-epochs", self.local_epochs),
                        ("batch-size", self.batch_size), ("distill-steps", self.distill_steps),
                        ("distill-batch-size", self.distill_batch_size), ("eval-every", self.eval_every),
                        ("patience", self.patience), ("eval-batch-size", self.eval_batch_size)):
            if v < 1:
                bad(flag, v, "must be a positive integer")
        for flag, v in (("train-limit", self.train_limit), ("test-limit", self.test_limit)):
            if v is not None and v < 1:
                bad(flag, v, "must be a positive number of images")
        for flag, v in (("local-lr", self.local_lr), ("distill-lr", self.distill_lr),
                        ("temperature", self.temperature)):
            check_range(f"--{flag}", v, lo=0, lo_open=True)
        check_range("--local-momentum", self.local_momentum, lo=0, hi=1, hi_open=True, fix="e.g. 0 (paper) or 0.9")
        check_range("--weight-decay", self.weight_decay, lo=0, fix="e.g. 0 (paper) or 5e-4")
        check_range("--fedlc-tau", self.fedlc_tau, lo=0, fix="FedLC's calibration strength, e.g. 1.0")
        if self.prox_mu is not None:
            check_range("--prox-mu", self.prox_mu, lo=0, fix="e.g. 0.01")
        if self.server_momentum is not None:
            check_range("--server-momentum", self.server_momentum, lo=0, hi=1, hi_open=True, fix="e.g. 0.9")
        from feddf.federated.precision import parse_precisions

        precisions = parse_precisions(self.client_precision)
        if isinstance(self.clients, int) and len(precisions) > self.clients:
            bad("client-precision", self.client_precision, f"{len(precisions)} values for {self.clients} clients; "
                f"give one value for all, or at most one per client (client i gets p[i * P // n])")
        from feddf.federated.transfer import SELECTIONS

        if self.distill_select not in SELECTIONS:
            bad("distill-select", repr(self.distill_select), f"choose one of {', '.join(SELECTIONS)}")
        check_range("--select-fraction", self.select_fraction, lo=0, hi=1, lo_open=True,
                    fix="the kept share of each round's transfer set, e.g. 0.5")
        check_range("--logit-adjust", self.logit_adjust, lo=0,
                    fix="tau of the teachers' label-prior adjustment, e.g. 1 for CE clients; 0 = the paper's plain "
                    "ensemble (default)")
        check_range("--distill-mixup", self.distill_mixup, lo=0, fix="the Beta(a, a) parameter; 0 = off, e.g. 1.0")
        self._check_synth()
        if self.prefetch < 0 or self.source_memory_mb < 0:
            bad("prefetch/source-memory-mb", f"{self.prefetch}/{self.source_memory_mb}", "must be >= 0")
        check_seed("--seed", self.seed)

    def _check_synth(self) -> None:
        from feddf.federated.synth import LABELS, PREFIX, is_synth

        if self.distill_pool is not None and self.distill_pool < 0:
            raise FeddfError(f"--distill-pool {self.distill_pool}: must be >= 0 (images per round; 0 = the whole "
                             "source)")
        for flag in ("synth_ce", "synth_bn", "synth_adv", "synth_div"):
            check_range("--" + flag.replace("_", "-"), getattr(self, flag), lo=0,
                        fix="a loss weight >= 0 (0 switches the term off)")
        check_range("--synth-lr", self.synth_lr, lo=0, lo_open=True, fix="the generator's Adam rate, e.g. 1e-3")
        check_range("--synth-embed-lr", self.synth_embed_lr, lo=0, lo_open=True,
                    fix="the class embedding's Adam rate, e.g. 3e-2")
        check_range("--synth-mix", self.synth_mix, lo=0, hi=1, fix="a share in [0, 1], e.g. 0.5")
        if self.synth_memory < 0:
            raise FeddfError(f"--synth-memory {self.synth_memory}: must be >= 0 (earlier rounds' pools to keep)")
        if self.synth_steps < 0 or self.synth_batch_size < 1:
            raise FeddfError(f"--synth-steps {self.synth_steps} / --synth-batch-size {self.synth_batch_size}: steps "
                             "must be >= 0 and the batch >= 1")
        if self.synth_labels not in LABELS:
            raise FeddfError(f"--synth-labels {self.synth_labels!r}: choose one of {', '.join(LABELS)}")
        if is_synth(self.distill_source):
            if self.distill_source == PREFIX:
                raise FeddfError(f"--distill-source {PREFIX}: name the generator, e.g. synth:scratch or "
                                 "synth:dcgan-fashion-mnist")
            if self.distill_pool == 0:
                raise FeddfError("--distill-pool 0 with a synth: source: the synthesiser draws a pool each round; "
                                 "give its size, e.g. 5000")
        elif self.synth_checkpoint is not None:
            raise FeddfError("--synth-checkpoint applies to --distill-source synth:dcgan only")

    def server_uses_label_counts(self) -> bool:
        """Whether the server step uses the clients' label counts: the one rule for whether a client sends them
        with its model (fusion.client_step, the Flower ClientApp). FedDF uses them for the teachers' label-prior
        adjustment (--logit-adjust > 0) and for a synthesiser's label prior (--synth-labels prior); otherwise they
        stay on the client."""
        from feddf.federated.synth import is_synth

        if self.aggregator != "feddf":
            return False
        return bool(self.logit_adjust) or (is_synth(self.distill_source) and self.synth_labels == "prior")


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _slug(spec: str) -> str:
    """A run-folder name part: 'folder:/data/xray' -> 'xray', 'mypkg.nets:build' -> 'mypkg.nets.build'."""
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("folder", "npz", "cache", "hf"):
        return Path(rest.split("[")[0].rstrip("/")).stem or kind
    return spec.split("[")[0].replace(":", ".").replace("/", "_")


# config.json keys that describe a run rather than set it (setup.Task.config_record, the Flower ServerApp's engine),
# and how it was invoked: a replay ignores both
RECORD_ONLY = {"versions", "hashes", "test_spec", "num_classes", "channels", "resolution", "dataset_info",
               "arch_info", "engine", "resume", "progress", "sends"}


def load_config_file(path: str | Path) -> dict:
    """`--config FILE`: a TOML file of `feddf train` keys, or a run's config.json (replays that run)."""
    return load_json(path) if Path(path).suffix == ".json" else load_toml(path)


def read_config(p: Path, where: str):
    """The parsed TOML (or, for a .json file, JSON) of p; one line starting with `where` when it cannot be read."""
    import json
    import tomllib

    kind = "JSON" if p.suffix == ".json" else "TOML"
    try:
        text = p.read_text()
        return json.loads(text) if kind == "JSON" else tomllib.loads(text)
    except FileNotFoundError:
        raise FeddfError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FeddfError(f"{where}: cannot read it as text ({getattr(e, 'strerror', None) or e})") from None
    except ValueError as e:  # json.JSONDecodeError, tomllib.TOMLDecodeError
        raise FeddfError(f"{where}: not valid {kind} ({e})") from None


def load_json(path: str | Path) -> dict:
    """The settings of a run's config.json, without its record-only keys; an unknown key is refused."""
    p = Path(path)
    data = read_config(p, f"--config {p}")
    if not isinstance(data, dict):
        raise FeddfError(f"--config {p}: must hold a JSON object of `feddf train` options (a run's config.json)")
    return train_keys(f"--config {p}", {k: v for k, v in data.items() if k not in RECORD_ONLY})


def load_toml(path: str | Path) -> dict:
    """Keys of a TOML file (dashes -> underscores), checked against TrainConfig's fields."""
    p = Path(path)
    data = read_config(p, f"--config {p}")
    data = data.get("train", data)  # either top-level keys or a [train] table
    if not isinstance(data, dict):
        raise FeddfError(f"--config {p}: `train` must be a table ([train]) of `feddf train` options")
    return train_keys(f"--config {p}", data)


def train_keys(where: str, data: dict) -> dict:
    """`data`'s keys as TrainConfig fields (dashes -> underscores); one line naming `where` for a key that is none."""
    out = {}
    for k, v in data.items():
        key = k.replace("-", "_")
        if key not in FIELDS:
            raise FeddfError(f"{where}: unknown key {k!r}; valid keys are the `feddf train` options")
        out[key] = v
    if isinstance(out.get("client_precision"), list):
        out["client_precision"] = ",".join(str(v) for v in out["client_precision"])
    if isinstance(out.get("archs"), str):
        out["archs"] = [a.strip() for a in out["archs"].split(",") if a.strip()]
    return out


def config_from(toml_values: dict, cli_values: dict) -> TrainConfig:
    """TOML values overridden by explicitly given command-line values."""
    return TrainConfig(**{**toml_values, **cli_values})
