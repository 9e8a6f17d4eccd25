#!/usr/bin/env bash
# `make demo`: what FedDF is for, at demo scale, offline: strongly non-iid clients (Dirichlet alpha 0.1, 2 local
# epochs, so the client models drift apart) fused by FedAvg vs by FedDF distilling from the shipped DCGAN's cache.
#   gen (20 000 images) -> train FedAvg, the count-aware FedAvg baselines (balanced softmax, FedLC: clients use their
#   label counts) and FedDF from the DCGAN cache, from the real public split and from a pool the server synthesises
#   against the ensemble each round (synth:dcgan-fashion-mnist) -> audit the cache (labeler = the FedAvg model)
#   -> compare the runs (accuracy-vs-round PNG) -> print the final numbers, whatever they are.
# Re-running continues/reuses what is already there (every step is resumable). Knobs: DEMO_N, DEMO_ROUNDS,
# DEMO_ALPHA, DEMO_EPOCHS, DEMO_TRAIN_LIMIT (a seeded subset of the training split; empty = all 60 000 images).
set -euo pipefail
cd "$(dirname "$0")/.."
FEDDF=${FEDDF:-.venv/bin/feddf}
PY=${PY:-.venv/bin/python}
N=${DEMO_N:-20000}
ROUNDS=${DEMO_ROUNDS:-4}
ALPHA=${DEMO_ALPHA:-0.1}
EPOCHS=${DEMO_EPOCHS:-2}
LIMIT=${DEMO_TRAIN_LIMIT-}
CACHE=cache/dcgan-fashion-mnist-28px-${N}.h5
COMMON=(--dataset fashion-mnist --arch cnn --clients 20 --fraction 0.4 --alpha "$ALPHA" --rounds "$ROUNDS"
        --local-epochs "$EPOCHS" --augment none --seed 0 --resume ${LIMIT:+--train-limit "$LIMIT"})
T0=$SECONDS

step() { printf '\n== %s (%ds)\n' "$*" $((SECONDS - T0)); }

step "1/6 feddf gen: $N images from dcgan-fashion-mnist -> $CACHE"
"$FEDDF" gen --generator dcgan-fashion-mnist --n "$N" --seed 0 --out "$CACHE"

step "2/6 feddf train: FedAvg, alpha=$ALPHA, $ROUNDS rounds x $EPOCHS local epochs"
"$FEDDF" train "${COMMON[@]}" --aggregator fedavg --out runs/demo-fedavg

step "3/6 feddf train: the count-aware FedAvg baselines (--local-loss balanced-softmax, fedlc), same clients"
"$FEDDF" train "${COMMON[@]}" --aggregator fedavg --local-loss balanced-softmax --out runs/demo-fedavg-bs
"$FEDDF" train "${COMMON[@]}" --aggregator fedavg --local-loss fedlc --out runs/demo-fedavg-fedlc

step "4/6 feddf train: FedDF distilling from the DCGAN cache, same clients"
"$FEDDF" train "${COMMON[@]}" --aggregator feddf --distill-source gan --cache "$CACHE" \
  --distill-steps 300 --eval-every 50 --patience 150 --out runs/demo-feddf

step "4b/6 feddf train: FedDF from the real public split test[:5000], and from a pool the server synthesises"
"$FEDDF" train "${COMMON[@]}" --aggregator feddf --distill-source fashion-mnist \
  --distill-steps 300 --eval-every 50 --patience 150 --out runs/demo-feddf-real
"$FEDDF" train "${COMMON[@]}" --aggregator feddf --distill-source synth:dcgan-fashion-mnist \
  --distill-steps 300 --eval-every 50 --patience 150 --save-pool runs/demo-feddf-synth/pools --out runs/demo-feddf-synth

step "5/6 feddf audit: class coverage of the cache (labeler: the FedAvg model)"
"$FEDDF" audit "$CACHE" --labeler runs/demo-fedavg --no-fid --out reports/demo-audit --force

step "6/6 feddf compare: FedAvg, the count-aware baselines and FedDF"
"$FEDDF" compare runs/demo-fedavg runs/demo-fedavg-bs runs/demo-fedavg-fedlc runs/demo-feddf runs/demo-feddf-real \
  runs/demo-feddf-synth --target-acc 0.7 --out reports/demo-compare --force

printf '\n== final test accuracy (test[5000:]) after %s rounds, alpha=%s, %s local epochs\n' "$ROUNDS" "$ALPHA" "$EPOCHS"
"$PY" - <<'PY'
import json
from pathlib import Path

def accs(name):
    rows = [json.loads(x) for x in (Path("runs") / name / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [a["distilled"] if a["distilled"] is not None else a["fedavg"] for a in (r["acc"]["cnn"] for r in rows)]


mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
aware = max(("demo-fedavg-bs", "demo-fedavg-fedlc"), key=lambda n: mean(accs(n)))  # best count-aware baseline
for name, what in (("demo-fedavg", "FedAvg"), (aware, "best count-aware FedAvg"), ("demo-feddf", "FedDF + DCGAN"),
                   ("demo-feddf-real", "FedDF + real split"), ("demo-feddf-synth", "FedDF + synthesised")):
    a = accs(name)
    print(f"  {what:24s} {name:18s} final {a[-1]:.3f}  mean over rounds {mean(a):.3f}  per round "
          + " ".join(f"{v:.3f}" for v in a))
PY

cat <<MSG

Demo finished in $((SECONDS - T0)) s. Results:
  cache          $CACHE            (feddf cache info $CACHE)
  runs           runs/demo-fedavg  runs/demo-fedavg-bs  runs/demo-fedavg-fedlc  runs/demo-feddf
                 runs/demo-feddf-real  runs/demo-feddf-synth (its pools: runs/demo-feddf-synth/pools/round-NNN.h5)
                 (config.json, metrics.jsonl, models/)
  audit report   reports/demo-audit/report.html
  comparison     reports/demo-compare/report.html   accuracy-vs-round: reports/demo-compare/figures/accuracy.png
MSG
