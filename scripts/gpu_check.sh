#!/usr/bin/env bash
# Issue 8's device checks in one run, for a machine with one GPU (../shared/GPU.md): a short train + evaluate
# through the user's commands (precision auto: bf16-mixed, TF32), then python -m dpm.bench on the paper's CIFAR-10
# network (eager at batch 200, compiled + channels_last at 1024; each beside the plain loop in the same run) and
# the exact bound over 10,000 images at T = 1000. About 9 minutes on an H100. Results (JSON, logs) go to $OUT.
#
#   bash scripts/gpu_check.sh              # on the GPU machine, from the project root (.whl/ from gpu-prep.sh)
#   TINY=1 OUT=/tmp/gc bash scripts/gpu_check.sh   # the same steps at toy sizes, on a CPU, to try the script
set -euo pipefail
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
if [ -d .whl ] && ! python3 -c "import hydra" 2>/dev/null; then  # the GPU machine has no Hydra: its wheels
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
if [ "${TINY:-0}" = 1 ]; then
  TRAIN="trainer.max_steps=20 trainer.val_check_interval=10 dataset.n_train=256 T=20"
  EVAL="limit=20"
  SMALL="T=5 dataset.n_train=64 dataset.n_val=16 dataset.n_test=16 net.n_hidden_conv=4 net.n_layers_conv=1 net.n_hidden_dense_lower=8 net.n_layers_dense_lower=2 net.n_hidden_dense_lower_output=1 net.n_hidden_dense_upper=4 net.n_layers_dense_upper=1"
  B200="--batch 8 --steps 4 --rounds 2 --warmup 1 --forward-steps 2 --forward-batch 8 --floor-steps 20 $SMALL"
  B1024="--batch 8 --steps 4 --rounds 2 --warmup 1 --forward-steps 2 --forward-batch 8 $SMALL"
  BOUND="--bound-n 8 --bound-batch 4 $SMALL"
else
  TRAIN="trainer.max_steps=600 trainer.val_check_interval=300"
  EVAL="limit=400"
  B200="--batch 200 --steps 400 --rounds 3 --warmup 30"
  B1024="--batch 1024 --steps 240 --rounds 3 --warmup 20 --compile --channels-last"
  BOUND="--compile --channels-last --bound-n 10000 --bound-batch 2500"
fi
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" \
  | tee "$OUT/device.txt"
python3 train.py experiment=digits_cpu $TRAIN logger=csv latest_link=null progress=false \
  trainer.enable_progress_bar=false hydra.run.dir="$OUT/digits" 2>&1 | tail -15 | tee "$OUT/train.log"
python3 evaluate.py ckpt_path="$OUT/digits/checkpoints/last.ckpt" $EVAL progress=false \
  hydra.run.dir="$OUT/digits_eval" 2>&1 | tail -12 | tee "$OUT/evaluate.log"
python3 -m dpm.bench --preset cifar10 $B200 --bound-n 0 --no-progress-bar --json "$OUT/bench_b200.json" \
  2>&1 | grep -v "Warning" | tail -8 | tee "$OUT/bench_b200.log"
python3 -m dpm.bench --preset cifar10 $B1024 --bound-n 0 --floor-steps 0 --no-progress-bar --json "$OUT/bench_b1024.json" \
  2>&1 | grep -v "Warning" | tail -8 | tee "$OUT/bench_b1024.log"
python3 -m dpm.bench --preset cifar10 --no-train --no-forward --floor-steps 0 $BOUND --json "$OUT/bound.json" \
  2>&1 | grep -v "Warning" | tail -4 | tee "$OUT/bound.log"
echo "done: $OUT"
