#!/usr/bin/env bash
# `make quickstart`: FedDF against FedAvg on real Fashion-MNIST in about a minute on 2 CPU cores. 10 strongly
# non-iid clients (Dirichlet alpha 0.1) on a 6 000-image subset, 3 rounds of 1 local epoch, 4 clients a round:
#   FedAvg (plain cross-entropy clients), FedAvg with balanced-softmax clients (count-aware, like FedDF's default
#   clients) and FedDF distilling from the public split test[:5000] (imported once into cache/).
# Then `feddf compare` prints the three side by side. Runs go to runs/quickstart-*, re-running starts them afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
FEDDF=${FEDDF:-.venv/bin/feddf}
COMMON=(--dataset fashion-mnist --arch cnn --clients 10 --alpha 0.1 --rounds 3 --local-epochs 1
        --train-limit 6000 --test-limit 2000 --augment none --seed 0 --quiet)
T0=$SECONDS
rm -rf runs/quickstart-fedavg runs/quickstart-fedavg-bs runs/quickstart-feddf
"$FEDDF" train "${COMMON[@]}" --aggregator fedavg --out runs/quickstart-fedavg > /dev/null
"$FEDDF" train "${COMMON[@]}" --aggregator fedavg --local-loss balanced-softmax --out runs/quickstart-fedavg-bs \
  > /dev/null
"$FEDDF" train "${COMMON[@]}" --aggregator feddf --distill-source fashion-mnist --distill-steps 200 --eval-every 50 \
  --out runs/quickstart-feddf | sed -n 1,2p   # its run folder and transfer set
"$FEDDF" compare runs/quickstart-fedavg runs/quickstart-fedavg-bs runs/quickstart-feddf \
  --out reports/quickstart --force
echo "quickstart finished in $((SECONDS - T0)) s"
