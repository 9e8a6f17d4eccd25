"""`feddf train`: federated learning with FedAvg / FedProx / FedAvgM, or FedDF ensemble distillation from a source.

    feddf train --dataset fashion-mnist --arch cnn --aggregator feddf --distill-source noise --clients 4 --rounds 1 \
        --local-epochs 1 --train-limit 600 --test-limit 500 --distill-steps 20 --eval-every 10 --out runs/demo

Every option defaults to the FedDF paper's released setting (see `feddf.federated.config` and docs/training.md);
`--config FILE.toml` supplies the same keys, `--config runs/X/config.json` replays run X, and flags given on the command
line override either.
"""
from __future__ import annotations

import click
import cloup

from feddf.federated.config import TrainConfig as _C

_D = _C()


def _default(name: str) -> str:
    if not hasattr(_D, name):
        return ""
    v = getattr(_D, name)
    shown = "auto" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
    return f" [default: {shown}]"


def _opt(flag: str, type_=str, help_: str = "", field: str | None = None, **kw):
    name = field or flag.lstrip("-").split("/")[0].replace("-", "_")
    return click.option(flag, name, type=type_, default=None, help=help_ + _default(name), **kw)


def _flag(flag: str, help_: str):
    name = flag.lstrip("-").split("/")[0].replace("-", "_")
    return click.option(flag, name, default=None, help=help_ + _default(name))


OPTIONS = [
    _opt("--config", click.Path(dir_okay=False), "TOML file with any of these options, or a run's config.json to "
         "replay that run (flags override it).", field="config_file"),
    _opt("--dataset", str, "Task dataset: fashion-mnist, cifar10, cifar100, or your own: folder:PATH, npz:PATH, "
         "cache:PATH.h5, hf:PATH (a Hugging Face dataset; docs/api.md)."),
    _opt("--data-root", str, "Folder of the datasets; it must exist (feddf.data's default, created on demand, when "
         "omitted)."),
    _opt("--image-column", str, "hf: datasets: the image column (default: the Image feature, or image/img).",
         metavar="NAME"),
    _opt("--label-column", str, "hf: datasets: the label column (default: the ClassLabel feature, or label).",
         metavar="NAME"),
    _opt("--test-split", str, "Evaluation split; fashion-mnist uses test[5000:] because test[:5000] trains the DCGAN, "
         "other datasets use test.", metavar="SPLIT"),
    _opt("--train-limit", int, "Use a seeded random subset of N training images (quick runs).", metavar="N"),
    _opt("--test-limit", int, "Evaluate on the first N test images.", metavar="N"),
    _opt("--val-fraction", float, "Share of the training split the server keeps as labelled validation data."),
    _opt("--arch", str, "Architecture of every client (resnet8, resnet20, resnet32, vgg9, shufflenetv2, cnn), or "
         "your own pkg.module:factory or timm:NAME (docs/api.md)."),
    _opt("--archs", str, "Heterogeneous clients, comma-separated: client i trains archs[i*A//n]; one prototype "
         "per architecture, each distilled from all clients (feddf only).", metavar="A,B,..."),
    _opt("--norm", str, "Normalisation layers: bn, gn, none."),
    _opt("--aggregator", str, "feddf, fedavg, fedprox or fedavgm."),
    _opt("--weighting", str, "FedAvg weights: size (client data size) or uniform (the paper code)."),
    _opt("--partition", str, "Non-iid split: dirichlet-balanced (paper code), dirichlet (Hsu et al.), iid, or Flower "
         "Datasets' flwr:dirichlet, flwr:pathological, flwr:shard, flwr:iid."),
    _opt("--clients", int, "Number of clients."),
    _opt("--alpha", float, "Dirichlet concentration (smaller = more non-iid)."),
    _opt("--fraction", float, "Share of clients sampled each round, in (0, 1]."),
    _opt("--rounds", int, "Communication rounds."),
    _opt("--local-epochs", int, "Local epochs per round."),
    _opt("--local-lr", float, "Client SGD learning rate."),
    _opt("--local-momentum", float, "Client SGD momentum."),
    _opt("--weight-decay", float, "Client weight decay."),
    _opt("--batch-size", int, "Client batch size."),
    _opt("--augment", str, "Client augmentation: crop-flip, flip, none."),
    _opt("--prox-mu", float, "FedProx proximal weight mu (0.01 for fedprox when omitted, else 0).", metavar="M"),
    _opt("--local-loss", str, "Clients' loss: ce (the paper), balanced-softmax (CE on logits + log of the "
         "client's smoothed label prior, Ren et al. 2020) or fedlc (logits - tau * n_c^-1/4, Zhang et al. 2022). "
         "Default: balanced-softmax under feddf (the counts stay on the client), ce otherwise.",
         metavar="ce|balanced-softmax|fedlc"),
    _opt("--fedlc-tau", float, "FedLC's calibration strength tau (--local-loss fedlc).", metavar="TAU"),
    _opt("--client-precision", str, "What clients train and upload in: fp32, bf16, fp16 or binary (1-bit weights, "
         "per-filter scale); a comma list is assigned like --archs (client i gets p[i*P//n]).", metavar="P[,P..]"),
    _opt("--client-engine", str, "How this machine runs a round's clients: batched (as many at once as it has "
         "cores, one thread each) or sequential (one after another); the results are identical.",
         metavar="batched|sequential"),
    _opt("--client-kernels", str, "How a client computes: portable (one thread, channels_last: the same floats on "
         "any machine, which batched needs) or legacy (NCHW, all threads: what a run folder whose config.json lacks "
         "client_kernels computed).",
         metavar="portable|legacy"),
    _opt("--server-kernels", str, "How the server computes (test and validation passes, distillation students): "
         "fused (portable on copies with BatchNorm folded into the convolutions and exact 2x2 max-pools), portable "
         "(one thread per chunk of images, channels_last: the same floats on any machine) or legacy (NCHW, all "
         "threads: what a run folder whose config.json lacks server_kernels computed).", metavar="fused|portable|legacy"),
    _opt("--server-momentum", float, "FedAvgM server momentum (0.9 for fedavgm when omitted).", metavar="B"),
    _opt("--distill-source", str, "gan (= --cache or the newest generated cache), noise, cifar100, stl10, "
         "imagenet32, fashion-mnist, a PATH.h5 cache, or synth:NAME: the server trains a class-conditional "
         "generator against the ensemble each round (synth:scratch from random weights, synth:dcgan-fashion-mnist "
         "or synth:dcgan + --synth-checkpoint from a DCGAN)."),
    _opt("--distill-pool", int, "Images in each round's transfer pool, labelled once by every teacher (0 = the whole "
         "source; default 2000 for synth:, else 0).", metavar="P"),
    _opt("--save-pool", click.Path(file_okay=False), "Write each round's pool as a feddf cache DIR/round-NNN.h5 "
         "(labels, ensemble predictions; read by feddf audit / cache info).", metavar="DIR"),
    _opt("--synth-checkpoint", click.Path(dir_okay=False), "DCGAN netG state_dict for --distill-source synth:dcgan.",
         metavar="FILE"),
    _opt("--synth-steps", int, "Generator steps per round (synth: sources).", metavar="N"),
    _opt("--synth-lr", float, "Generator Adam learning rate."),
    _opt("--synth-embed-lr", float, "Adam learning rate of the class embedding added to the generator's noise."),
    _opt("--synth-batch-size", int, "Images per generator step."),
    _opt("--synth-ce", float, "Weight of the ensemble's cross-entropy on the sampled labels (DENSE, FedFTG).",
         metavar="W"),
    _opt("--synth-bn", float, "Weight of BatchNorm-statistics matching on the teachers (DeepInversion, DENSE).",
         metavar="W"),
    _opt("--synth-adv", float, "Weight of the adversarial term: push samples to where student and ensemble "
         "disagree (DENSE, FedFTG).", metavar="W"),
    _opt("--synth-div", float, "Weight of the diversity term (FedGen, FedFTG).", metavar="W"),
    _opt("--synth-memory", int, "Earlier rounds' synthesised pools distilled on beside the new one (DENSE's memory "
         "bank; 0 = only this round's).", metavar="R"),
    _opt("--synth-mix", float, "Share of synthesised samples asked for a mixture of two classes (lam in [0.5, 1) of "
         "the labelled class): images between classes, whose ensemble targets are soft; 0 = none.", metavar="F"),
    _opt("--synth-labels", str, "Labels the generator is asked for: uniform over the classes, or prior (the "
         "clients' label counts, which they then send to the server).", metavar="uniform|prior"),
    _opt("--cache", click.Path(dir_okay=False), "Cache file for --distill-source gan (or where a named real set is "
         "imported)."),
    _opt("--cache-dir", click.Path(file_okay=False), "Folder searched for caches and used for imports."),
    _flag("--source-resize/--no-source-resize", "Convert a cache whose channels/resolution differ from the task."),
    _opt("--source-memory-mb", int, "Hold caches up to this size in memory (lets a sample's teacher targets be "
         "reused)."),
    _opt("--distill-steps", int, "Distillation step budget per round."),
    _opt("--distill-batch-size", int, "Distillation batch size."),
    _opt("--distill-lr", float, "Adam learning rate of the students (cosine-annealed)."),
    _opt("--temperature", float, "Distillation temperature T."),
    _opt("--ensemble", str, "avg-logits, avg-probs or avg-losses."),
    _opt("--logit-adjust", float, "Subtract TAU x log(label prior of its client) from each teacher's logits, so "
         "label-skewed clients do not outvote the classes they rarely saw (0 = default: the plain ensemble, as the "
         "paper). TAU > 0 makes every client send its label counts with its model.", metavar="TAU"),
    _opt("--patience", int, "Stop distilling after this many steps without a validation improvement."),
    _opt("--eval-every", int, "Validate the students every N steps.", metavar="N"),
    _flag("--ensemble-fedavg/--no-ensemble-fedavg", "Add each architecture's FedAvg model to the teachers (as "
          "FedBE does): the ensemble then cannot fall far below the average."),
    _flag("--drop-worst/--no-drop-worst", "Drop clients under 1.2x random-guess validation accuracy (paper code)."),
    _opt("--distill-augment", str, "Augmentation of distillation batches: none, flip, crop-flip."),
    _opt("--distill-mixup", float, "Mixup of distillation batches, lam ~ Beta(a, a) (0 = off).", metavar="A"),
    _opt("--distill-select", str, "Per-round selection of transfer samples by the ensemble: none, low-entropy "
         "(confident), hard (high KL ensemble vs student)."),
    _opt("--distill-bn", str, "Students' BatchNorm while distilling: running (the FedAvg start's statistics, "
         "measured by the clients on real data, kept; default) or train (re-estimated on the transfer batches, as "
         "the paper code).", metavar="running|train"),
    _opt("--select-fraction", float, "Share of transfer samples --distill-select keeps, in (0, 1]."),
    _opt("--teacher-precision", str, "auto (bf16 where the hardware has it natively), fp32 or bf16."),
    _flag("--compile-teachers/--no-compile-teachers", "torch.compile the teachers each round."),
    _opt("--prefetch", int, "Batches whose teacher targets a background thread computes ahead (0 = none)."),
    _opt("--eval-batch-size", int, "Batch size of evaluations."),
    _opt("--seed", int, "Seed of everything (partition, sampling, training).", metavar="S"),
    _opt("--device", str, "auto, cpu, cuda or cuda:N.", metavar="D"),
    _opt("--out", click.Path(file_okay=False), "Run folder (default runs/<dataset>-<archs>-<aggregator>...).",
         metavar="runs/NAME"),
    _flag("--resume/--no-resume", "Continue the run in --out after its last completed round."),
    click.option("--log", "trackers", multiple=True, metavar="tensorboard|csv|wandb", callback=lambda c, p, v: list(v)
                 or None, help="Also write each round's metrics to TensorBoard event files (<out>/tensorboard), "
                 "<out>/metrics.csv or an offline wandb run (needs wandb); repeat for several."),
]


# --help sections (cloup option groups), in this order, by option name; an option named in none of them is listed
# under REST. ENGINE last: switches of how this machine computes, not of the method.
GROUPS = {
    "Data": ["dataset", "data_root", "test_split", "train_limit", "test_limit", "val_fraction"],
    "Clients and local training": ["arch", "archs", "norm", "clients", "partition", "alpha", "fraction",
                                   "local_epochs", "local_lr", "local_momentum", "weight_decay", "batch_size", "augment",
                                   "prox_mu", "local_loss", "fedlc_tau", "client_precision"],
    "Rounds and aggregation": ["rounds", "aggregator", "weighting", "server_momentum", "drop_worst"],
    "Transfer set (FedDF)": ["distill_source", "cache", "cache_dir", "source_resize", "distill_pool", "save_pool",
                             "synth_checkpoint", "synth_steps", "synth_lr", "synth_embed_lr", "synth_batch_size",
                             "synth_ce", "synth_bn", "synth_adv", "synth_div", "synth_labels", "synth_memory", "synth_mix"],
    "Distillation (FedDF)": ["distill_steps", "distill_batch_size", "distill_lr", "temperature", "ensemble",
                             "logit_adjust", "ensemble_fedavg", "patience", "eval_every", "distill_bn",
                             "distill_augment", "distill_mixup", "distill_select", "select_fraction"],
}
REST = "Run and output"
ENGINE = ("Engine: how this machine computes", ["server_kernels", "client_kernels", "client_engine", "prefetch",
                                                 "compile_teachers", "teacher_precision", "eval_batch_size",
                                                 "source_memory_mb", "device"])


def group_options(fn, groups: dict[str, list[str]] | None = None):
    """Put the options click collected on `fn` into cloup option groups: GROUPS, then `groups` (a command's own),
    then REST (every option not named), then ENGINE; the command must be a cloup.Command."""
    from cloup import OptionGroup

    sections = {**GROUPS, **(groups or {}), REST: [], ENGINE[0]: ENGINE[1]}
    where = {name: i for i, names in enumerate(sections.values()) for name in names}
    objs = [OptionGroup(title) for title in sections]
    rest = list(sections).index(REST)
    params = getattr(fn, "__click_params__", [])
    # click stores decorator params in reverse; cloup lists groups and options in the order of the command's params
    order = {id(p): i for i, p in enumerate(reversed(params))}
    for p in params:
        if isinstance(p, click.Option):
            p.group = objs[where.get(p.name, rest)]
    params.sort(key=lambda p: (-where.get(p.name, rest) if isinstance(p, click.Option) else 1, -order[id(p)]))
    return fn


def _command(fn):
    for o in reversed(OPTIONS):
        fn = o(fn)
    return fn


@click.command("train", cls=cloup.Command)
@group_options
@_command
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as one JSON line on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def command(config_file, as_json, quiet, **options) -> None:
    """Federated training: partition -> local SGD -> FedAvg per architecture -> (FedDF) ensemble distillation.

    \b
    Examples:
      feddf train --aggregator fedavg --rounds 20
      feddf train --aggregator feddf --distill-source gan --cache cache/dcgan-fashion-mnist-28px-20000.h5
      feddf train --archs resnet20,resnet32,shufflenetv2 --distill-source fashion-mnist
      feddf train --out runs/NAME --resume      # after a crash: continue after the last completed round
    """
    import json
    import sys

    from feddf.api import train

    given = {k: v for k, v in options.items() if v is not None}
    if quiet:
        given["progress"] = False
    log = (lambda s: click.echo(s, err=True)) if as_json else click.echo
    summary = train(config_file=config_file, log=log, **given)  # feddf.api maps the options to a TrainConfig
    if as_json:
        sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
