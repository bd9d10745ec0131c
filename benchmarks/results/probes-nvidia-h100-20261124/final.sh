export PYTHONUNBUFFERED=1 DISTIL_KIT_SST2=.gpu-carry/sst2 DISTIL_KIT_MINILM=.gpu-carry/minilm
nvidia-smi --query-gpu=name,clocks.sm,memory.used --format=csv,noheader
echo "== bench"; timeout 170 python3 benchmarks/bench.py --rows 16384 --flagperf-rows 2048 --tokenizer .gpu-carry/minilm --data .gpu-carry/sst2 --out $OUT 2>&1 | grep -v "it/s\]" | tail -22
echo "== ten epochs"; python3 -c "from distil_kit.modeling import save_random_distilbert as s; s('/tmp/dbase', '.gpu-carry/minilm', tiny=False)"
timeout 140 python3 -m distil_kit finetune --set model=/tmp/dbase --set data_dir=.gpu-carry/sst2 --set fast=true --set target_acc=null --set save_model=false --set output_dir=/tmp/ten 2>&1 | grep -v "it/s\]" | tail -3
for f in summary.json config.json evals.csv; do cp /tmp/ten/$f $OUT/ten-$f; done; python3 -c "import json;s=json.load(open('/tmp/ten/summary.json'));print({k:s[k] for k in ['train_time','train_no_eval_time','pure_training_computing_time','throughput(ips)_no_eval','compile_time','tokens_per_s','steps']})"
echo "== tests"; timeout 130 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee $OUT/gpu-tests.log | grep -E "passed|failed|^E " | head -12
echo "== guard"; timeout 100 python3 benchmarks/bench.py --accuracy-guard --model .gpu-carry/minilm --data .gpu-carry/sst2 --out $OUT 2>&1 | grep -v "it/s\]" | tail -8
