"""The teacher ensemble of FedDF: the distillation target from the client models, computed fast, once per batch.

    python -c "import torch; from feddf.federated.teachers import ensemble_target; \
p, c = ensemble_target(torch.randn(3, 4, 10), 'avg-losses', 1.0); print(p.sum(1), c)"

Pure maths (`ENSEMBLES`, `ensemble_target`, `distill_loss`, `ensemble_scores`) and the `TeacherEnsemble` engine.

Ensemble rules (`--ensemble`, the paper code's `update_student_scheme`); z_i = teacher i's logits, w_i its weight:
  avg-logits  target p = softmax(sum_i w_i z_i / T)                   (the paper's released commands)
  avg-probs   target p = sum_i w_i softmax(z_i / T)
  avg-losses  loss = sum_i w_i KL(softmax(z_i/T) || q)  (the code's default when no scheme is given). Since
              sum_i w_i KL(p_i || q) = KL(p_bar || q) + [H(p_bar) - sum_i w_i H(p_i)], it is avg-probs plus a
              per-sample constant: same gradient, and only one KL per step instead of one per teacher.
The loss is F.kl_div(log_softmax(s / T), p, 'batchmean') as in the paper code (no T^2 factor).

Label-prior adjustment (`--logit-adjust tau`, `label_prior_adjustment`): before any rule, teacher i's logits become
z_i - tau * log pi_i, pi_i its client's Laplace-smoothed label distribution ((n_ic + 1) / (n_i + K)). A client
trained on a label-skewed split computes p_i(c|x) ~ p(x|c) pi_i(c); removing log pi_i leaves its evidence for c with
a uniform prior (logit adjustment, Menon et al. 2021), so under strong non-iid the classes a client rarely saw are
no longer outvoted by each client's own majority classes. tau = 0 is the paper's plain rule.

Speed (CPU; see benchmarks/bench_distill.py): the client models never change during a round, so each teacher is
prepared once: a deep copy in eval mode with frozen weights, BatchNorm folded into the preceding convolution
(torch.fx `fuse`), 2x2 max-pools as an exact max of strided views (feddf.models.inference), channels_last memory
format, optionally bfloat16 weights (`precision='bf16'`, on CPUs with AVX512-BF16/AMX) and torch.compile; outputs
are computed under inference_mode. On a GPU, teachers of one architecture can be evaluated together with
torch.func.vmap over their stacked weights (`batched=True`).
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from feddf.errors import FeddfError
from feddf.models.inference import exact_pools

ENSEMBLES = ("avg-logits", "avg-probs", "avg-losses")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def resolve_precision(name: str, device: torch.device | str = "cpu") -> str:
    """'auto' -> 'bf16' where the hardware runs bfloat16 natively (CPU: AVX512-BF16/AMX via oneDNN; CUDA: sm80+),
    else 'fp32'. bench_distill.py checks that the bf16 ensemble's argmax agrees with fp32's."""
    if name != "auto":
        return name
    dev = torch.device(device)
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        native = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        native = False
    return "bf16" if native else "fp32"


def label_prior_adjustment(counts, tau: float) -> torch.Tensor:
    """Per-teacher class counts (T, K) -> the (T, K) float32 term tau * log((n_ic + 1) / (n_i + K)) to subtract from
    teacher i's logits (module docstring). Every row is finite: a class a client never saw gets log(1 / (n_i + K))."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    if n.dim() != 2 or (n < 0).any():
        raise FeddfError(f"label counts must be a (teachers, classes) array of counts >= 0, got shape {tuple(n.shape)}")
    prior = (n + 1.0) / (n.sum(1, keepdim=True) + n.shape[1])
    return (float(tau) * torch.log(prior)).float()


def _weights(n: int, weights: Sequence[float] | None, like: torch.Tensor) -> torch.Tensor:
    w = torch.full((n,), 1.0 / n) if weights is None else torch.as_tensor(list(weights), dtype=torch.float32)
    w = w / w.sum()
    return w.to(like.device, like.dtype).view(n, 1, 1)


def ensemble_target(logits: torch.Tensor, mode: str, temperature: float,
                    weights: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits (T, B, K) -> (target probabilities (B, K), per-sample loss constant (B,))."""
    t = float(temperature)
    w = _weights(logits.shape[0], weights, logits)
    if mode == "avg-logits":
        probs = F.softmax((w * logits).sum(0) / t, dim=1)
        return probs, torch.zeros(probs.shape[0], dtype=probs.dtype, device=probs.device)
    if mode not in ("avg-probs", "avg-losses"):
        raise FeddfError(f"unknown --ensemble {mode!r}: choose one of {', '.join(ENSEMBLES)}")
    p_i = F.softmax(logits / t, dim=2)  # (T, B, K)
    probs = (w * p_i).sum(0)
    if mode == "avg-probs":
        return probs, torch.zeros(probs.shape[0], dtype=probs.dtype, device=probs.device)
    ent = lambda p: -(p * torch.log(p.clamp_min(1e-30))).sum(-1)  # noqa: E731  entropy over the class axis
    const = ent(probs) - (w.view(-1, 1) * ent(p_i)).sum(0)  # H(p_bar) - sum_i w_i H(p_i) >= 0, shape (B,)
    return probs, const


def distill_loss(student_logits: torch.Tensor, probs: torch.Tensor, const: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """KL(target || softmax(student / T)), averaged over the batch, plus the ensemble rule's constant."""
    kl = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), probs, reduction="batchmean")
    return kl + const.mean()


def ensemble_scores(logits: torch.Tensor, mode: str, weights: Sequence[float] | None = None) -> torch.Tensor:
    """Scores (B, K) whose argmax is the ensemble's prediction (T = 1): mean logits, or mean probabilities."""
    w = _weights(logits.shape[0], weights, logits)
    if mode == "avg-logits":
        return (w * logits).sum(0)
    return (w * F.softmax(logits, dim=2)).sum(0)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy with every Conv->BatchNorm pair folded into one Conv (torch.fx); the model itself if the
    graph cannot be traced (any architecture still works, just unfolded)."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model.eval(), inplace=False)
    except Exception:  # noqa: BLE001 - tracing limits of torch.fx; folding is only an optimisation
        return model


def prepare_teacher(model: nn.Module, *, fold_bn: bool = True, channels_last: bool = True,
                    precision: str = "fp32", device: torch.device | str = "cpu") -> nn.Module:
    m = copy.deepcopy(model).to(device).eval()
    m.requires_grad_(False)
    if fold_bn:
        m = fold_batchnorm(m)
    exact_pools(m)  # the same values as nn.MaxPool2d(2), no indices: feddf.models.inference
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    return m.to(PRECISIONS[precision])


# Stack same-architecture teachers into one vmapped call only for small models. vmap turns each convolution into a
# grouped one over the teachers: a win while kernel launches dominate (small nets), a loss once each teacher's own
# convolutions fill the GPU. Measured on an H100 (benchmarks/bench_distill.py --device cuda, 8 teachers, batch 256,
# fp32 teachers vs the per-teacher loop): ResNet-8 (78 k params) 1.7x, ResNet-20 (0.27 M) 1.5x, VGG-9 (3.5 M) 0.84x.
# A fixed rule rather than a timing on the first batch keeps runs reproducible.
VMAP_MAX_PARAMS = 1_000_000


class TeacherEnsemble:
    """Client models as one ensemble: `target(x)` -> (probs (B, K), const (B,)) for normalised float inputs x."""

    def __init__(self, models: Sequence[nn.Module], *, mode: str = "avg-logits", temperature: float = 1.0,
                 precision: str = "fp32", fold_bn: bool = True, channels_last: bool = True, compile: bool = False,
                 batched: bool | str = False, device: torch.device | str = "cpu"):
        if not models:
            raise FeddfError("no teachers to distill from: every client model was dropped (try without --drop-worst)")
        if mode not in ENSEMBLES:
            raise FeddfError(f"unknown --ensemble {mode!r}: choose one of {', '.join(ENSEMBLES)}")
        if precision not in PRECISIONS:
            raise FeddfError(f"unknown teacher precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        self.mode, self.temperature, self.device = mode, float(temperature), torch.device(device)
        self.dtype = PRECISIONS[precision]
        self.channels_last = channels_last
        self.weights: list[float] | None = None
        self.adjust: torch.Tensor | None = None  # (T, K) subtracted from the logits (label_prior_adjustment)
        self._fns = self._build(list(models), fold_bn, channels_last, precision, compile, batched)

    def _build(self, models, fold_bn, channels_last, precision, compile, batched) -> list[Callable]:
        """One callable per group: x -> (n_group, B, K). Same-architecture teachers share a vmap group if batched;
        batched="auto" stacks only architectures of at most VMAP_MAX_PARAMS parameters (see there)."""
        groups: list[list[nn.Module]] = []
        if batched:
            by_kind: dict[tuple, list[nn.Module]] = {}
            for m in models:  # same class + same parameter shapes = stackable
                key = (type(m), tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()))
                by_kind.setdefault(key, []).append(m)
            groups = list(by_kind.values())
            if batched == "auto":
                groups = [grp for g in groups for grp in
                          ([g] if sum(p.numel() for p in g[0].parameters()) <= VMAP_MAX_PARAMS else [[m] for m in g])]
        else:
            groups = [[m] for m in models]
        self.order: list[int] = []  # position of each group member in the original list
        pos = {id(m): i for i, m in enumerate(models)}
        fns = []
        for g in groups:
            self.order.extend(pos[id(m)] for m in g)
            fns.append(_Group(g, fold_bn=fold_bn, channels_last=channels_last, precision=precision,
                              compile=compile, device=self.device))
        return fns

    @property
    def fallbacks(self) -> list[str]:
        """Speed-ups some teacher could not take (e.g. 'channels_last' for a model that .view()s its input)."""
        return sorted({f for g in self._fns for f in g.dropped})

    def __len__(self) -> int:
        return len(self.order)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.dtype, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float (B, C, H, W) -> teacher logits (T, B, K) float32, in the original teacher order."""
        with torch.inference_mode():
            x = x.to(self.device, self.dtype, non_blocking=True)
            inputs: dict[bool, torch.Tensor] = {}  # channels_last or not -> the batch in that layout, made once

            def layout(cl: bool) -> torch.Tensor:
                if cl not in inputs:
                    inputs[cl] = x.contiguous(memory_format=torch.channels_last) if cl and x.dim() == 4 else x
                return inputs[cl]

            out = torch.cat([fn(layout).float() for fn in self._fns], 0)
            if self.order != sorted(self.order):
                out = out[torch.argsort(torch.tensor(self.order, device=out.device))]
            if self.adjust is not None:  # (T, K) -> broadcast over the batch: (T, 1, K)
                out = out - self.adjust.to(out.device)[:, None, :]
        return out.clone()  # a normal tensor: inference tensors cannot be saved for the student's backward

    def target(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            probs, const = ensemble_target(self.logits(x), self.mode, self.temperature, self.weights)
        return probs.clone(), const.clone()


class _Group:
    """Teachers evaluated together: layout(channels_last) -> (n_group, B, K). The first batch tries the fastest
    path (vmap over stacked weights, channels_last, BN folded, compiled); a model that cannot take one of them (an
    arbitrary `pkg.module:factory` net: .view() on a channels_last tensor, in-place ops or .item() under vmap, control
    flow that torch.fx or torch.compile cannot trace) drops that speed-up — one at a time, in the order below — and
    the group is rebuilt from the original models. Results are the same on every path; only speed differs."""

    FALLBACK_ORDER = ("compile", "vmap", "channels_last", "fold_bn")

    def __init__(self, models: list[nn.Module], *, fold_bn: bool, channels_last: bool, precision: str,
                 compile: bool, device: torch.device):
        self.models, self.precision, self.device = models, precision, device
        self.opts = {"compile": compile, "vmap": len(models) > 1, "channels_last": channels_last, "fold_bn": fold_bn}
        self.dropped: list[str] = []
        self.settled = False
        self._make()

    def _make(self) -> None:
        o = self.opts
        prepared = [prepare_teacher(m, fold_bn=o["fold_bn"], channels_last=o["channels_last"],
                                    precision=self.precision, device=self.device) for m in self.models]
        if o["vmap"]:
            self.fn = _vmapped(prepared)
        else:
            ms = [torch.compile(m, dynamic=False) if o["compile"] else m for m in prepared]
            self.fn = lambda x: [m(x) for m in ms]

    def _try(self, x: torch.Tensor):
        if self.settled:
            return self.fn(x)
        import contextlib
        import io

        with contextlib.redirect_stderr(io.StringIO()):  # torch.fx prints the failing traced code to stderr
            return self.fn(x)

    def __call__(self, layout: Callable[[bool], torch.Tensor]) -> torch.Tensor:
        while True:
            try:
                out = self._try(layout(self.opts["channels_last"]))
            except Exception as e:  # noqa: BLE001 - any failure of an optional speed-up on the first batch
                left = [k for k in self.FALLBACK_ORDER if self.opts[k]]
                if self.settled or not left:
                    raise FeddfError(f"teacher {type(self.models[0]).__name__} failed on a distillation batch: "
                                     f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") \
                        from None
                self.opts[left[0]] = False
                self.dropped.append(left[0])
                self._make()
                continue
            if not isinstance(out, torch.Tensor):  # the loop's list of outputs, or a vmapped tuple/dict
                items = out if isinstance(out, list) else [out]
                bad = next((o for o in items if not isinstance(o, torch.Tensor)), None)
                if bad is not None:
                    raise FeddfError(f"teacher {type(self.models[0]).__name__} returns a {type(bad).__name__}; "
                                     "distillation needs a (batch, classes) logits tensor: return only the logits")
                out = torch.stack(items)
            self.settled = True
            return out


def _vmapped(models: list[nn.Module]) -> Callable:
    """Evaluate same-architecture models in one vmapped functional call: x (B, ...) -> (n, B, K)."""
    from torch.func import functional_call, vmap

    # stacked by name (BN-folded copies are distinct fx classes, so torch.func.stack_module_state refuses them)
    params = {k: torch.stack([dict(m.named_parameters())[k] for m in models]) for k, _ in models[0].named_parameters()}
    buffers = {k: torch.stack([dict(m.named_buffers())[k] for m in models]) for k, _ in models[0].named_buffers()}
    base = copy.deepcopy(models[0]).to("meta")

    def one(p, b, x):
        return functional_call(base, (p, b), (x,))

    run = vmap(one, in_dims=(0, 0, None))
    return lambda x: run(params, buffers, x)
