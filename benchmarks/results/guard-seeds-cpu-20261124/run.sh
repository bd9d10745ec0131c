#!/usr/bin/env bash
# More guard seeds on the CPU, one invocation (one CSV) per seed.
cd "$(dirname "$0")/../../.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
for s in "$@"; do
  echo "== seed $s $(date -u +%T)"
  python benchmarks/bench.py --accuracy-guard --seeds $s --out benchmarks/results 2>&1 | grep -v "it/s\]" | tail -12
done
echo "== done $(date -u +%T)"
