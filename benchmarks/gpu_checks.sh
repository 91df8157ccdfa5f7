#!/bin/bash
# Everything this project checks on a lent GPU, in one call (about 7-8 minutes on one H100; the timeouts
# below cap it at ~9 minutes, inside a 10-minute command limit):
#   bash benchmarks/gpu_checks.sh OUT_DIR
# 1. ViT-L/16 train step (16x224, batch 24, bf16), alone on the GPU: today's step against compiled
#    models, fused AdamW, the deferred finiteness check and all three, as ratios measured in one run,
#    with MFU against the card's dense peak (benchmarks/train_step.py --ab; the issue-13 table);
# 2. then, side by side: the quickstart sweep (benchmarks/sweeps/quickstart_gpu.txt), the flash-attention
#    and bf16-vs-fp32 checks, the attentive-probe step plain vs folded (benchmarks/probe_step.py, with
#    peak memory; not yet run on a GPU), and the real pretraining loop at ViT-L (synthetic clips, bf16, 16 steps with
#    the GPU defaults: compiled, fused AdamW, deferred check; then a resume to 24 with compile off, which
#    also shows that compiled and eager checkpoints are interchangeable).
#
# The FSDP checks (meta.fsdp, vjepa/engine/fsdp.py) and the padded-mask throughput are a separate call:
#   bash benchmarks/gpu_checks.sh OUT_DIR fsdp
# With one GPU the world size is 1: every parameter is a one-shard DTensor, so this exercises the
# wrapping, FSDP's hooks and collectives, the full-state gather, compile over sharded modules and
# resume, not the memory saving. a. the tiny run sharded vs plain (fp32, eager: must agree to float
# rounding; on CPU they agree bit for bit); b. the ViT-L loop sharded (bf16, compiled) to step 8, resumed
# sharded to 12 (eager), its checkpoint read by `vjepa.load_encoder` and resumed by a plain 1-process run
# to 14; c. DDP vs FSDP step time (benchmarks/train_step.py --fsdp-ab), then the ViT-L step with truncated vs
# padded (`pad_to_longest`) masks, one batch and 4 length groups (--pad-ab, ~2 min; not yet run on a GPU); d. vit_giant sharded at batch 16
# with activation checkpointing, 4 steps. About 7.5 minutes in all.
set -u
OUT=${1:-/tmp/gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG="$OUT/checks.log"
[ "${2:-}" = fsdp ] && LOG="$OUT/fsdp_checks.log"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python -c "import torch; print('torch', torch.__version__)"; } 2>&1 | tee "$LOG"
if [ "${2:-}" = fsdp ]; then
  TR="python -m torch.distributed.run --nproc_per_node 1 --master_port 29517"
  T=/tmp/fsdp_checks; rm -rf $T; mkdir -p $T
  timeout 60 $TR train.py --config tests/tiny_pretrain.yaml meta.fsdp=true meta.compile=false logging.folder=$T/tiny_fsdp > $T/tiny_fsdp.log 2>&1
  echo "a. tiny sharded run: exit $?" | tee -a "$LOG"
  timeout 40 python train.py --config tests/tiny_pretrain.yaml meta.compile=false logging.folder=$T/tiny_plain > $T/tiny_plain.log 2>&1
  python - "$T" <<'PY' 2>&1 | tee -a "$LOG"
import csv, sys, torch
t = sys.argv[1]
rows = [list(csv.DictReader(open(f"{t}/{r}/metrics.csv"))) for r in ("tiny_fsdp", "tiny_plain")]
print("a. loss, sharded vs plain:", [(float(a["loss"]), float(b["loss"])) for a, b in zip(*rows)])
sa, sb = (torch.load(f"{t}/{r}/jepa-latest.pt", weights_only=True) for r in ("tiny_fsdp", "tiny_plain"))
for part in ("encoder", "predictor", "target_encoder"):
    print(f"a. {part}: max |sharded - plain| = {max((sa[part][k] - sb[part][k]).abs().max().item() for k in sb[part]):.3g}")
PY
  V="--config configs/pretrain/vitl16.yaml data.datasets=[] data.batch_size=8 data.num_workers=6 logging.log_every=4"
  timeout 150 $TR train.py $V meta.fsdp=true meta.max_steps=8 logging.folder=$T/vitl > $T/vitl_8.log 2>&1
  echo "b. ViT-L sharded, compiled, to step 8: exit $?" | tee -a "$LOG"
  timeout 70 $TR train.py $V meta.fsdp=true meta.max_steps=12 meta.compile=false meta.load_checkpoint=true logging.folder=$T/vitl > $T/vitl_12.log 2>&1
  echo "b. ViT-L sharded resume to 12 (eager): exit $?" | tee -a "$LOG"
  timeout 40 python -c "import sys, vjepa; e = vjepa.load_encoder(sys.argv[1]); print('b. load_encoder: D', e.embed_dim, 'grid', e.grid)" $T/vitl/jepa-latest.pt 2>&1 | tail -1 | tee -a "$LOG"
  timeout 70 python train.py $V meta.max_steps=14 meta.compile=false meta.read_checkpoint=$T/vitl/jepa-latest.pt logging.folder=$T/vitl_plain > $T/vitl_plain.log 2>&1
  echo "b. plain 1-process resume of the sharded checkpoint to 14: exit $?" | tee -a "$LOG"
  cat $T/vitl/metrics.csv $T/vitl_plain/metrics.csv 2>/dev/null | cut -d, -f1-3 | tee -a "$LOG"
  timeout 120 python benchmarks/train_step.py --fsdp-ab --nproc 1 --sizes vit_large --batch 24 --steps 3 --warmup 2 \
    --rounds 2 --json "$OUT/fsdp_ab.json" 2>&1 | grep -v "^W[0-9]" | tail -6 | tee -a "$LOG"
  timeout 130 python benchmarks/train_step.py --pad-ab --published --sizes vit_large --batch 24 --steps 3 --warmup 2 \
    --rounds 2 --length-groups 4 2>&1 | grep -v "^W[0-9]" | tail -10 | tee -a "$LOG"
  timeout 120 $TR train.py $V model.model_name=vit_giant model.use_activation_checkpointing=true data.batch_size=16 \
    meta.fsdp=true meta.compile=false meta.max_steps=4 logging.log_every=1 logging.folder=$T/giant > $T/giant.log 2>&1
  echo "d. vit_giant sharded, batch 16, activation checkpointing, 4 steps: exit $?" | tee -a "$LOG"
  cut -d, -f1-2 $T/giant/metrics.csv 2>/dev/null | tee -a "$LOG"
  for f in $T/*.log; do echo "== $f"; tail -c 1500 $f | tr '\r' '\n' | grep -v "^W[0-9]" | tail -8; done > "$OUT/fsdp_logs.txt"
  exit 0
fi
timeout ${AB_SECONDS:-210} python benchmarks/train_step.py --ab --sizes vit_large --batch 24 --steps 4 --warmup 2 \
  --rounds 3 --json "$OUT/train_step_ab.json" 2>&1 | grep -v "^W[0-9]" | tee -a "$LOG"

timeout ${SWEEP_SECONDS:-300} python benchmarks/quickstart_sweep.py benchmarks/sweeps/quickstart_gpu.txt --out /tmp/sweep \
  --parallel 4 > "$OUT/sweep.log" 2>&1 &
SWEEP=$!
timeout 90 python benchmarks/cuda_check.py --size vit_large --batch 4 2>&1 | tee -a "$LOG"
timeout 60 python -m benchmarks.probe_step --device cuda --rounds 3 --steps 5 2>&1 | tee -a "$LOG"
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
