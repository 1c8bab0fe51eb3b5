#!/usr/bin/env bash
# The recipe sweep of docs/EXPERIMENTS.md: short Multi30k en->de runs side by side on one GPU, each bounded by
# a number of updates and validated every 500 updates (greedy BLEU on the first 300 `val` sentences).
#   bash scripts/sweep_recipes.sh ROUND OUT [UPDATES] [MULTI30K_DIR]      # ROUND: 1 or 2
# Each run's metrics.jsonl is copied to OUT/NAME.jsonl.
set -u
ROUND=$1
OUT=$2
UPDATES=${3:-3000}
DATA=${4:-data/multi30k}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
PY=${PYTHON:-python3}
common=(--config configs/multi30k_en_de_gpu.yaml --data-dir "$DATA" train.max_steps="$UPDATES"
        train.patience=0 train.keep_last=0 train.eval_every=500 train.eval_max_sentences=300 train.log_every=100)

run() {
    local name=$1 dir
    shift
    dir=$(mktemp -d)
    timeout 600 $PY -m transformer train "${common[@]}" --run-dir "$dir" "$@" >"$dir.log" 2>&1
    cp "$dir/metrics.jsonl" "$OUT/$name.jsonl"
    grep -E "validation|rror" "$dir.log" | sed "s/^/$name /"
}

if [ "$ROUND" = 1 ]; then
    run r1_ctrl model.norm_first=false model.dropout=0.3 train.lr=1e-3 &
    run r2_lr2e3 model.norm_first=false model.dropout=0.3 train.lr=2e-3 &
    run r3_drop01 model.norm_first=false model.dropout=0.1 train.lr=1e-3 &
    run r4_lr2e3_drop02 model.norm_first=false model.dropout=0.2 train.lr=2e-3 &
    run r5_preln_lr3e3 model.norm_first=true model.dropout=0.3 train.lr=3e-3 &
    run r6_small256 model.norm_first=false model.dropout=0.3 train.lr=1e-3 model.d_model=256 model.d_ff=1024 \
        model.n_encoder_layers=3 model.n_decoder_layers=3 &
else
    run p1_preln_lr3e3 model.norm_first=true model.dropout=0.3 train.lr=3e-3 &
    run p2_preln_lr5e3 model.norm_first=true model.dropout=0.3 train.lr=5e-3 &
    run p3_preln_lr3e3_drop02 model.norm_first=true model.dropout=0.2 train.lr=3e-3 &
    run p4_preln_lr3e3_wu1000 model.norm_first=true model.dropout=0.3 train.lr=3e-3 train.warmup_steps=1000 &
    run p5_preln_lr3e3_attdrop model.norm_first=true model.dropout=0.3 train.lr=3e-3 model.attention_dropout=0.1 \
        model.activation_dropout=0.1 &
fi
wait
