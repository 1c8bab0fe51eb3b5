#!/usr/bin/env bash
# Does a change keep every number? Trains configs/sample.yaml, translates, evaluates, exports to CTranslate2 and
# distills with the code of two git revisions (each from its own clean copy), then compares: the tensors of
# best.pt (model and optimizer) bitwise, metrics.jsonl (timings aside), and every output file byte for byte.
#   bash scripts/same_numbers.sh BEFORE [AFTER] [WORK]     # revisions (default AFTER: the working tree)
# Float results differ across CPU kinds: compare two runs on one machine, never against a stored hash.
set -euo pipefail
BEFORE=$1; AFTER=${2:-}; WORK=${3:-$(mktemp -d)}
ROOT=$(git rev-parse --show-toplevel)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

numbers() {  # numbers CODE OUT: every output of the sample model, written with the package in CODE
    local code=$1 out=$2 c=runs/sample/checkpoints/best.pt
    mkdir -p "$out" && cd "$code"
    export PYTHONPATH=$code TRANSFORMER_CACHE_DIR=$code/data/cache
    transformer train --config configs/sample.yaml > "$out/train.log" 2>&1
    cp $c runs/sample/metrics.jsonl "$out/"
    transformer translate --checkpoint $c < data/sample/test.en > "$out/beam.txt"
    transformer translate --checkpoint $c --beam-size 1 < data/sample/test.en > "$out/greedy.txt"
    transformer translate --checkpoint $c --n-best 3 --beam-size 4 < data/sample/test.en > "$out/nbest.txt"
    transformer translate --checkpoint $c --checkpoint runs/sample/checkpoints/last.pt < data/sample/test.en > "$out/ensemble.txt"
    transformer translate --checkpoint $c --alignment < data/sample/test.en > "$out/alignment.txt"
    transformer evaluate --checkpoint $c --split test --output "$out/evaluate_hyp.txt" | grep -E "^(BLEU|chrF)" > "$out/evaluate.txt"
    transformer export --checkpoint $c --format ctranslate2 --output ct2 > /dev/null
    transformer translate --engine ctranslate2 --model ct2 < data/sample/test.en > "$out/ct2_beam.txt"
    transformer translate --engine ctranslate2 --model ct2 --n-best 3 --beam-size 4 < data/sample/test.en > "$out/ct2_nbest.txt"
    transformer evaluate --engine ctranslate2 --model ct2 --split test | grep -E "^(BLEU|chrF)" > "$out/ct2_evaluate.txt"
    transformer distill --checkpoint $c --data-dir data/sample --output "$out/distilled" > /dev/null
    rm "$out/distilled/distill.json"  # it names the paths and times of its run
}

for side in before after; do
    rev=$BEFORE; [ $side = after ] && rev=$AFTER
    mkdir -p "$WORK/$side/code"
    if [ -n "$rev" ]; then git -C "$ROOT" archive "$rev" | tar -x -C "$WORK/$side/code"
    else (cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$WORK/$side/code"); fi
    (numbers "$WORK/$side/code" "$WORK/$side/out")
done

python - "$WORK/before/out" "$WORK/after/out" <<'PY'
import filecmp, json, sys
from pathlib import Path
import torch
before, after = map(Path, sys.argv[1:])
def tensors(x, key=""):
    if isinstance(x, torch.Tensor):
        yield key, x
    elif isinstance(x, (dict, list, tuple)):
        for k, v in (x.items() if isinstance(x, dict) else enumerate(x)):
            yield from tensors(v, f"{key}.{k}")
b, a = (torch.load(d / "best.pt", weights_only=True) for d in (before, after))
tb, ta = (dict(tensors({k: s[k] for k in ("model", "optimizer")})) for s in (b, a))
ok = tb.keys() == ta.keys() and all(torch.equal(tb[k], ta[k]) for k in tb)
print(f"best.pt: {len(tb)} tensors of the model and optimizer at step {a['step']}: {'bitwise equal' if ok else 'DIFFERENT'}")
timing = ("time", "tgt_tokens_per_s", "tokens_per_s", "seconds")
records = [[{k: v for k, v in json.loads(l).items() if k not in timing} for l in open(d / "metrics.jsonl")] for d in (before, after)]
same = records[0] == records[1]
print(f"metrics.jsonl: {len(records[1])} records {'equal' if same else 'DIFFERENT'}")
ok &= same
for path in sorted(p for p in before.rglob("*") if p.is_file() and p.suffix != ".pt" and p.name not in ("train.log", "metrics.jsonl")):
    equal = filecmp.cmp(path, after / path.relative_to(before), shallow=False)
    print(f"{path.relative_to(before)}: {'identical' if equal else 'DIFFERENT'}")
    ok &= equal
sys.exit(0 if ok else 1)
PY
