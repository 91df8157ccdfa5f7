#!/bin/bash
# Everything this project checks on a lent GPU, in one call (about 7-8 minutes on one H100; the timeouts
# below cap it at ~9 minutes, inside a 10-minute command limit):
#   bash benchmarks/gpu_checks.sh OUT_DIR
# 1. ViT-L/16 train step (16x224, batch 24, bf16), alone on the GPU: today's step against compiled
#    models, fused AdamW, the deferred finiteness check and all three, as ratios measured in one run,
#    with MFU against the card's dense peak (benchmarks/train_step.py --ab; the issue-13 table);
# 2. then, side by side: the quickstart sweep (benchmarks/sweeps/quickstart_gpu.txt), the flash-attention
#    and bf16-vs-fp32 checks, and the real pretraining loop at ViT-L (synthetic clips, bf16, 16 steps with
#    the GPU defaults: compiled, fused AdamW, deferred check; then a resume to 24 with compile off, which
#    also shows that compiled and eager checkpoints are interchangeable).
set -u
OUT=${1:-/tmp/gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG="$OUT/checks.log"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python -c "import torch; print('torch', torch.__version__)"; } 2>&1 | tee "$LOG"
timeout ${AB_SECONDS:-210} python benchmarks/train_step.py --ab --sizes vit_large --batch 24 --steps 4 --warmup 2 \
  --rounds 3 --json "$OUT/train_step_ab.json" 2>&1 | grep -v "^W[0-9]" | tee -a "$LOG"

timeout ${SWEEP_SECONDS:-300} python benchmarks/quickstart_sweep.py benchmarks/sweeps/quickstart_gpu.txt --out /tmp/sweep \
  --parallel 4 > "$OUT/sweep.log" 2>&1 &
SWEEP=$!
timeout 90 python benchmarks/cuda_check.py --size vit_large --batch 4 2>&1 | tee -a "$LOG"
for steps in 16 24; do
  resume=$([ $steps = 24 ] && echo true || echo false)
  compile=$([ $steps = 24 ] && echo false || echo true)
  timeout $([ $steps = 24 ] && echo 90 || echo 150) python train.py --config configs/pretrain/vitl16.yaml data.datasets=[] data.batch_size=8 data.num_workers=6 \
    meta.max_steps=$steps meta.load_checkpoint=$resume meta.compile=$compile logging.folder=/tmp/vitl logging.log_every=4 \
    > /tmp/vitl_$steps.log 2>&1
  echo "ViT-L loop to step $steps (resume=$resume, compile=$compile): exit $?" | tee -a "$LOG"
  tail -c 600 /tmp/vitl_$steps.log | tr '\r' '\n' | tail -4 >> "$LOG"
done
cat /tmp/vitl/metrics.csv >> "$LOG" 2>/dev/null
wait $SWEEP
echo "sweep exit $?" >> "$OUT/sweep.log"
cp /tmp/sweep/sweep.json "$OUT/" 2>/dev/null
tar czf "$OUT/sweep_runs.tar.gz" --exclude="*.pt" --exclude=tb -C /tmp sweep 2>/dev/null
tar czf "$OUT/vitl_logs.tar.gz" -C /tmp vitl_16.log vitl_24.log 2>/dev/null
tail -25 "$OUT/sweep.log"
