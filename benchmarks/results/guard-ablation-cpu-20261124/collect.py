"""One CSV row per finished run folder under OUT: the package's comparison table (accuracy, throughputs, device,
precision) with the fast-mode switches and versions beside it.  python collect.py OUT runs.csv
"""
import sys

import pandas as pd

from distil_kit import analysis

SWITCHES = ("seed", "bucket_batches", "pad_to_multiple_of", "fused_adamw")
VERSIONS = ("torch", "transformers", "created")

runs = analysis.load_runs(f"{sys.argv[1]}/*-seed*")
table = analysis.comparison_table(runs, published=False)
extra = pd.DataFrame([{**{k: r.config[k] for k in SWITCHES}, **{k: r.manifest[k] for k in VERSIONS}} for r in runs])
table = pd.concat([table, extra], axis=1)
table.to_csv(sys.argv[2], index=False, float_format="%.6g")
print(table[["run", "final_acc", "throughput(ips)_no_eval"]].to_string(index=False))
