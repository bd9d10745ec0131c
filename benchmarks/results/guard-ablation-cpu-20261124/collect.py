"""One CSV row per finished run folder under OUT: seed, switches, dev accuracy, samples/s, versions, all read from
the run's own records.  python collect.py OUT runs.csv
"""
import json
import sys
from pathlib import Path
import pandas as pd

rows = []
for d in sorted(Path(sys.argv[1]).glob("*-seed*")):
    if not (d / "summary.json").exists():
        continue
    s, c, m = (json.loads((d / f).read_text()) for f in ("summary.json", "config.json", "manifest.json"))
    rows.append({"run": d.name, "seed": c["seed"], "precision": c["precision"], "bucket_batches": c["bucket_batches"],
                 "pad_to_multiple_of": c["pad_to_multiple_of"], "fused_adamw": c["fused_adamw"],
                 "dev_acc": s["acc"], "samples_per_s": s["throughput(ips)_no_eval"], "train_samples": s["train_samples"],
                 "device_name": m["device_name"], "torch": m["torch"], "transformers": m["transformers"],
                 "created": m["created"], "model": Path(c["model"]).parent.name})
pd.DataFrame(rows).to_csv(sys.argv[2], index=False, float_format="%.6g")
print(pd.DataFrame(rows)[["run", "dev_acc", "samples_per_s"]].to_string(index=False))
