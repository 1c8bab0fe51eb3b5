#!/usr/bin/env bash
# One pass over the CUDA path on one GPU, writing its figures under OUT (default gpu_check/):
# CUDA tests, the training/decoding benchmark of the base preset in bf16 (eager, then torch.compile, with
# MFU and a profile), and a short Multi30k en->de run (bounded by updates) with its test BLEU.
#   bash scripts/gpu_check.sh [OUT] [MULTI30K_DIR] [TRAIN_UPDATES]
set -u
OUT=${1:-gpu_check}
DATA=${2:-data/multi30k}
UPDATES=${3:-1000}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
step() { echo; echo "=== $1 ($(date +%T))"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'flash sdp', torch.backends.cuda.flash_sdp_enabled())"

step "CUDA tests"
timeout 120 $PY -m pytest -q -p no:cacheprovider -m cuda tests/model/test_transformer.py 2>&1 | tail -3

step "benchmark: base, bf16, eager"
timeout 200 $PY -m transformer benchmark compare --device cuda --precision bf16 --presets base --max-tokens 32768 \
    --steps 20 --warmup 5 --repeats 3 --data-dir "$DATA" --profile "$OUT/profile.txt" --json "$OUT/bench_eager.json" 2>&1

step "benchmark: base, bf16, torch.compile (compiling both models took over 150 s on an H100)"
timeout 400 $PY -m transformer benchmark compare --device cuda --precision bf16 --presets base --max-tokens 32768 --compile \
    --steps 20 --warmup 10 --repeats 2 --no-memory --no-decode --data-dir "$DATA" --json "$OUT/bench_compile.json" 2>&1 \
    | grep -v Warning

step "Multi30k en-de, $UPDATES updates"
RUN=$OUT/run_en_de
timeout 300 $PY -m transformer train --config configs/multi30k_en_de_gpu.yaml --data-dir "$DATA" --run-dir "$RUN" \
    train.max_steps="$UPDATES" train.patience=0 2>&1 | grep -E "validation|done|error|Error"
$PY -m transformer average --run-dir "$RUN" --last 10 --output "$RUN/avg10.pt" 2>&1 | tail -1
for split in test_2016_flickr test_2017_flickr; do
    timeout 60 $PY -m transformer evaluate --checkpoint "$RUN/avg10.pt" --split $split --data-dir "$DATA" --lowercase 2>&1 | tail -6
done
cp "$RUN/metrics.jsonl" "$OUT/metrics_en_de.jsonl"
rm -rf "$RUN"
