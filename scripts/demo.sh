#!/usr/bin/env bash
# `make demo`: the main job at demo scale, offline, on the shipped DCGAN trained on Fashion-MNIST test[:5000].
#   gen (20 000 images) -> train FedAvg and FedDF (gan source) -> audit the cache (labeler = the FedAvg model)
#   -> compare the two runs.  Re-running continues/reuses what is already there (every step is resumable).
set -euo pipefail
cd "$(dirname "$0")/.."
FEDDF=${FEDDF:-.venv/bin/feddf}
N=${DEMO_N:-20000}
ROUNDS=${DEMO_ROUNDS:-4}
CACHE=cache/dcgan-fashion-mnist-28px-${N}.h5
COMMON=(--dataset fashion-mnist --arch cnn --clients 20 --fraction 0.4 --alpha 1.0 --rounds "$ROUNDS"
        --local-epochs 1 --augment none --seed 0 --resume)

step() { printf '\n== %s\n' "$*"; }

step "1/5 feddf gen: $N images from dcgan-fashion-mnist -> $CACHE"
"$FEDDF" gen --generator dcgan-fashion-mnist --n "$N" --seed 0 --out "$CACHE"

step "2/5 feddf train: FedAvg, $ROUNDS rounds"
"$FEDDF" train "${COMMON[@]}" --aggregator fedavg --out runs/demo-fedavg

step "3/5 feddf train: FedDF distilling from the DCGAN cache, $ROUNDS rounds"
"$FEDDF" train "${COMMON[@]}" --aggregator feddf --distill-source gan --cache "$CACHE" \
  --distill-steps 400 --eval-every 50 --patience 200 --out runs/demo-feddf

step "4/5 feddf audit: class coverage of the cache (labeler: the FedAvg model)"
"$FEDDF" audit "$CACHE" --labeler runs/demo-fedavg --no-fid --out reports/demo-audit

step "5/5 feddf compare: FedAvg vs FedDF"
"$FEDDF" compare runs/demo-fedavg runs/demo-feddf --target-acc 0.7 --out reports/demo-compare

cat <<MSG

Demo finished. Results:
  cache          $CACHE            (feddf cache info $CACHE)
  runs           runs/demo-fedavg  runs/demo-feddf   (config.json, metrics.jsonl, models/)
  audit report   reports/demo-audit/report.html
  comparison     reports/demo-compare/report.html
MSG
