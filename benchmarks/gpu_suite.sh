#!/usr/bin/env bash
# Every GPU figure feddf reports, in one run (planned < 8 min on an H100/H200), into one JSON file with the device.
#
#   bash benchmarks/gpu_suite.sh --fetch-wheels      # HERE, once (needs PyPI): wheels the GPU image lacks -> .whl/
#   bash benchmarks/gpu_suite.sh --out $OUT/gpu_suite.json    # ON THE GPU MACHINE, from a plain copy of the tree
#   bash benchmarks/gpu_suite.sh --device cpu --tiny --out /tmp/suite.json   # CPU smoke run (tests/test_fast_mode.py)
# With the device tool: run(command="bash benchmarks/gpu_suite.sh --out $OUT/gpu_suite.json", carry=[".whl"],
# timeout_s=540); the figures come back as gpu_suite.json. If compiling eats the budget, rerun with --compile off.
#
# Installs nothing from the network. Python: $PYTHON, else ./.venv/bin/python if it runs, else python3 (on the lent
# GPU machines that is the image's own torch build; see /work/.library/device/KINDS.md: torch, h5py, scipy, click,
# tqdm, jinja2, matplotlib are there, pytorch-pretrained-biggan and the boto3 it imports are not). Wheels found in
# .whl/ (carried with the tree: `carry: [".whl"]`) are installed offline (--no-index --no-deps) into a temp folder
# that goes on PYTHONPATH, before the tree itself (PYTHONPATH=<root>). Each step runs under `timeout`, and the steps
# after the --budget-s deadline are skipped; a failed, timed-out or skipped step is recorded as such in the JSON
# ("status"), never as a figure. Steps, most important first:
#   bench_gen BigGAN-deep-128 (bitwise + --fast), feddf gen 100 000 images (--fast, BigGAN), bench_gen DCGAN (both),
#   bench_distill resnet8 / resnet20 / vgg9, bench_stream, bench_server (one FedDF round with a cache, a cache pool
#   and server-side synthesis against FedAvg: clients and server steps on the device; --quick under --tiny, skipped
#   under --tiny on a CPU, where it takes a minute or more). Options: --budget-s S (450), --gen-n N, --compile MODE.
# bench_server reads Fashion-MNIST from shared/fashion-mnist/ (IDX files, gzipped or not), else from
# /usr/share/datasets/fashion-mnist/; with neither it is recorded as skipped, with the reason. The device tool copies
# shared/ with the tree, so before the run call: mkdir -p shared/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*
# shared/fashion-mnist/ (it makes its DCGAN cache, 20 000 images, on the device when cache/ lacks it).
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEVICE=cuda TINY=0 OUT="" BUDGET=450 WHEELS="$ROOT/.whl" FETCH=0 GEN_N="" COMPILE=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --budget-s) BUDGET="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --gen-n) GEN_N="$2"; shift 2 ;;
    --compile) COMPILE="$2"; shift 2 ;;   # --fast rows: auto|on|graphs|off (off if compiling eats the budget)
    --fetch-wheels) FETCH=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "gpu_suite.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# What the GPU image lacks (pure-Python wheels; versions pinned to what our venv runs).
WHEEL_PINS="pytorch-pretrained-biggan==0.1.1 boto3==1.44.8 botocore==1.44.8 s3transfer==0.19.3 jmespath==1.1.0"
if [ "$FETCH" = 1 ]; then
  mkdir -p "$WHEELS" || exit 1
  # keep the wheels out of git (a worktree's .git is a file: then the main checkout's info/exclude is not ours to edit)
  if [ -d "$ROOT/.git" ] && ! grep -qx '/.whl/' "$ROOT/.git/info/exclude" 2>/dev/null; then
    echo '/.whl/' >> "$ROOT/.git/info/exclude"
  fi
  PIP="${PYTHON:-$ROOT/.venv/bin/python}"
  exec "$PIP" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" $WHEEL_PINS
fi

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif "$ROOT/.venv/bin/python" -c "" 2>/dev/null; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/feddf-gpu-suite.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WHEELS"/*.whl \
    || { echo "gpu_suite.sh: installing the carried wheels in $WHEELS failed" >&2; exit 1; }
  export PYTHONPATH="$PYTHONPATH:$WORK/site"  # after the tree and the image's own packages' precedence is kept
fi
missing=$("$PY" - <<'EOF'
import importlib
for m in ("torch", "numpy", "h5py", "scipy", "click", "tqdm", "pytorch_pretrained_biggan", "feddf"):
    try:
        importlib.import_module(m)
    except Exception as e:  # noqa: BLE001
        print(f"{m} ({type(e).__name__}: {e})")
EOF
)
if [ -n "$missing" ]; then
  echo "gpu_suite.sh: $PY cannot import: $missing; run 'bash benchmarks/gpu_suite.sh --fetch-wheels' on a machine" \
       "with PyPI access and carry .whl with the tree" >&2
  exit 1
fi
[ -n "$OUT" ] || OUT="$ROOT/gpu_suite-$(date -u +%Y%m%dT%H%M%SZ).json"

START=$(date +%s)
# skip NAME KIND REASON...: records a step that does not run; KIND budget counts as not ok, KIND by-design does not
skip() {
  local name="$1" kind="$2"; shift 2
  echo "skipped $kind $*" > "$WORK/$name.status"; echo "== $name: skipped ($*)"
}
# step NAME TIMEOUT_S CMD...: runs CMD (stdout+stderr to $WORK/NAME.log), records rc/seconds; skipped past the budget
step() {
  local name="$1" limit="$2"; shift 2
  local now=$(( $(date +%s) - START )) left
  left=$(( BUDGET - now ))
  if [ "$left" -le 5 ]; then skip "$name" budget "past the --budget-s $BUDGET deadline"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s): $*"
  local t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  echo "$rc $(( $(date +%s) - t0 ))" > "$WORK/$name.status"
  tail -n 3 "$WORK/$name.log" | cut -c1-300
}

if [ "$TINY" = 1 ]; then  # tiny sizes: the whole script end to end in well under a minute on a CPU
  NB=1 BB=1 ND=64 BD=32 REPS=1 DIST="--quick --steps 2 --warmup 1 --batch 8 --teachers 2" STREAM="--n 2000 --n-rss 2000 --repeats 1"
  GEN_N="${GEN_N:-2}" GEN_B=2
else
  NB=8192 BB=1024 ND=65536 BD=4096 REPS=2 DIST="--batch 256 --steps 100 --repeats 2" STREAM="--repeats 2"
  GEN_N="${GEN_N:-100000}" GEN_B=1024
fi
GEN_DT=$([ "$DEVICE" = cpu ] && echo fp32 || echo bf16)  # bf16 autocast is CUDA-only in feddf gen

# the card's own bf16 matrix ceiling (what the 22.6 GFLOP/image BigGAN rate is compared with) and the device name
step device 60 "$PY" - "$DEVICE" "$TINY" <<'EOF'
import json, sys, time, torch
dev, tiny = torch.device(sys.argv[1]), sys.argv[2] == "1"
out = {"device": str(dev), "torch": torch.__version__, "cuda": torch.version.cuda}
if dev.type == "cuda":
    out["gpu"] = torch.cuda.get_device_name(dev)
    n, dt = 8192, torch.bfloat16
else:
    import platform
    out["gpu"] = None
    out["cpu"] = platform.processor() or platform.machine()
    n, dt = (256 if tiny else 2048), torch.float32
g = torch.Generator(device=dev).manual_seed(0)  # random operands: zeros run faster than real data
a, b = (torch.randn(n, n, device=dev, dtype=dt, generator=g) for _ in range(2))
for _ in range(3):
    a @ b
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
sync(); t = time.perf_counter(); reps = 10
for _ in range(reps):
    a @ b
sync(); s = (time.perf_counter() - t) / reps
out["matmul_tflops"] = round(2 * n**3 / s / 1e12, 2)
out["matmul"] = f"{n}^3 {str(dt).replace('torch.', '')}, mean of {reps} after 3 warm-ups, random operands"
print(json.dumps(out))
EOF

step bench_gen_biggan 240 "$PY" "$ROOT/benchmarks/bench_gen.py" --device "$DEVICE" --dtype "$GEN_DT" --mode both --compile "$COMPILE" \
  --only biggan --n-biggan "$NB" --batch-biggan "$BB" --reps "$REPS"
step gen_e2e 150 "$PY" -m feddf gen --generator biggan-deep-128 --random-weights --fast --compile "$COMPILE" --n "$GEN_N" \
  --classes cifar10 --device "$DEVICE" --dtype "$GEN_DT" --batch-size "$GEN_B" --out "$WORK/gen.h5" --quiet --json
rm -f "$WORK/gen.h5"
step bench_gen_dcgan 100 "$PY" "$ROOT/benchmarks/bench_gen.py" --device "$DEVICE" --dtype "$GEN_DT" --mode both --compile "$COMPILE" \
  --only dcgan --n-dcgan "$ND" --batch-dcgan "$BD" --reps "$REPS"
for arch in resnet8 resnet20 vgg9; do
  # tiny (the CPU test): 21 s for vgg9 on an idle 2-core machine, over 50 s when it is shared; the GPU sizes keep 50
  step "bench_distill_$arch" "$([ "$TINY" = 1 ] && echo 120 || echo 50)" "$PY" "$ROOT/benchmarks/bench_distill.py" \
    --device "$DEVICE" --arch "$arch" $DIST
done
step bench_stream 90 "$PY" "$ROOT/benchmarks/bench_stream.py" $STREAM --tmp "$WORK"

# the data root whose fashion-mnist/ holds the four IDX files (bench_server's --data-root is feddf train's)
has_idx() {
  local f
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -f "$1/fashion-mnist/$f.gz" ] || [ -f "$1/fashion-mnist/$f" ] || return 1
  done
}
FMNIST_ROOT=""
for r in "$ROOT/shared" /usr/share/datasets; do has_idx "$r" && { FMNIST_ROOT="$r"; break; }; done
if [ -z "$FMNIST_ROOT" ]; then
  skip bench_server by-design "no Fashion-MNIST IDX files in $ROOT/shared/fashion-mnist or" \
    "/usr/share/datasets/fashion-mnist (see the header: copy them into shared/fashion-mnist before the run)"
elif [ "$TINY" = 1 ] && [ "$DEVICE" = cpu ]; then
  skip bench_server by-design "--tiny on cpu: even --quick takes about a minute on a CPU, more with" \
    "its 20 000-image cache to make"
else
  step bench_server "$([ "$TINY" = 1 ] && echo 120 || echo 240)" "$PY" "$ROOT/benchmarks/bench_server.py" \
    --device "$DEVICE" --data-root "$FMNIST_ROOT" --repeats 1 $([ "$TINY" = 1 ] && echo --quick)
fi

# one JSON: each step's last JSON line (its figures) + status, the device, the suite's own wall time
"$PY" - "$WORK" "$OUT" "$(( $(date +%s) - START ))" "$BUDGET" "$TINY" <<'EOF'
import json, sys
from pathlib import Path
work, out, wall, budget, tiny = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
res = {"suite": "benchmarks/gpu_suite.sh", "wall_s": wall, "budget_s": budget, "tiny": tiny == "1", "steps": {}}
by_design = []  # skipped steps that do not make the suite fail (no data, --tiny on a CPU)
for st in sorted(work.glob("*.status")):
    name, fields = st.stem, st.read_text().split()
    if fields[:2] == ["skipped", "by-design"]:
        by_design.append(name)
    row = {"status": "skipped", "reason": " ".join(fields[2:])} if fields[0] == "skipped" else {
        "status": "ok" if fields[0] == "0" else ("timed out" if fields[0] in ("124", "137") else f"failed rc {fields[0]}"),
        "seconds": int(fields[1])}
    log = work / f"{name}.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    figures = None
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                figures = json.loads(line)
                break
            except ValueError:
                pass
    if figures is not None and row["status"] == "ok":
        row["figures"] = figures
    elif row["status"] != "skipped":
        row["log_tail"] = lines[-15:]
        if row["status"] == "ok":
            row["status"] = "no JSON figures"
    res["steps"][name] = row
dev = res["steps"].get("device", {}).get("figures", {})
res["device"], res["gpu"] = dev.get("device"), dev.get("gpu")
bg = res["steps"].get("bench_gen_biggan", {}).get("figures", {})
if "biggan_deep_128_fast" in bg and dev.get("matmul_tflops"):  # the headline: fast-mode BigGAN vs the card's ceiling
    res["biggan_fast_img_s"] = bg["biggan_deep_128_fast"]["e2e_img_s"]
    res["biggan_bitwise_img_s"] = bg.get("biggan_deep_128", {}).get("e2e_img_s")
    res["biggan_fast_over_bitwise"] = bg.get("biggan_deep_128_fast_over_bitwise")
    res["biggan_fast_fraction_of_matmul_ceiling"] = round(bg["biggan_deep_128_fast"]["tflops"] /
                                                          dev["matmul_tflops"], 4)
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(res, indent=1, sort_keys=True))
bad = [k for k, v in res["steps"].items() if v["status"] != "ok" and k not in by_design]
print(f"wrote {out}: {len(res['steps'])} steps in {wall} s on {res['gpu'] or res['device']}; not ok: {bad or 'none'}"
      + (f"; skipped by design: {by_design}" if by_design else ""))
print(json.dumps({k: v for k, v in res.items() if k != "steps"}, sort_keys=True))
sys.exit(1 if bad else 0)
EOF
