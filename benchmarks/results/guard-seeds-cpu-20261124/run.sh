#!/usr/bin/env bash
# The accuracy guard one seed at a time, so each pair lands as its own CSV when it ends:  run.sh 7 8 9
cd "$(dirname "$0")/../../.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
for s in "$@"; do
  echo "== seed $s $(date -u +%T)"
  python benchmarks/bench.py --accuracy-guard --seeds $s --out benchmarks/results 2>&1 | grep -v "it/s\]" | tail -12
done
echo "== done $(date -u +%T)"
