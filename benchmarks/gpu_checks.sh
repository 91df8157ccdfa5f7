#!/bin/bash
# Everything this project checks on a lent GPU, in one call (about 7 minutes on one H100):
#   bash benchmarks/gpu_checks.sh OUT_DIR
# 1. ViT-L/16 train-step speed and MFU (bf16), alone on the GPU;
# 2. then, side by side: the quickstart sweep (benchmarks/sweeps/quickstart_gpu.txt), the flash-attention
#    and bf16-vs-fp32 checks, and the real pretraining loop at ViT-L (synthetic clips, bf16, 20 steps,
#    then a resume to 30).
set -u
OUT=${1:-/tmp/gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG="$OUT/checks.log"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python -c "import torch; print('torch', torch.__version__)"; } 2>&1 | tee "$LOG"
timeout 150 python benchmarks/train_step.py --sizes vit_large --batch 24 --peak-tflops 989 --steps 5 --warmup 2 2>&1 | tee -a "$LOG"

timeout ${SWEEP_SECONDS:-320} python benchmarks/quickstart_sweep.py benchmarks/sweeps/quickstart_gpu.txt --out /tmp/sweep \
  --parallel 4 > "$OUT/sweep.log" 2>&1 &
SWEEP=$!
timeout 120 python benchmarks/cuda_check.py --size vit_large --batch 4 2>&1 | tee -a "$LOG"
for steps in 20 30; do
  resume=$([ $steps = 30 ] && echo true || echo false)
  timeout 150 python train.py --config configs/pretrain/vitl16.yaml data.datasets=[] data.batch_size=8 data.num_workers=6 \
    meta.max_steps=$steps meta.load_checkpoint=$resume logging.folder=/tmp/vitl logging.log_every=5 > /tmp/vitl_$steps.log 2>&1
  echo "ViT-L loop to step $steps (resume=$resume): exit $?" | tee -a "$LOG"
  tail -c 600 /tmp/vitl_$steps.log | tr '\r' '\n' | tail -4 >> "$LOG"
done
cat /tmp/vitl/metrics.csv >> "$LOG" 2>/dev/null
wait $SWEEP
echo "sweep exit $?" >> "$OUT/sweep.log"
cp /tmp/sweep/sweep.json "$OUT/" 2>/dev/null
tar czf "$OUT/sweep_runs.tar.gz" --exclude="*.pt" --exclude=tb -C /tmp sweep 2>/dev/null
tar czf "$OUT/vitl_logs.tar.gz" -C /tmp vitl_20.log vitl_30.log 2>/dev/null
tail -25 "$OUT/sweep.log"
