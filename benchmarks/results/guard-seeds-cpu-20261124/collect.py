"""The CPU accuracy guard over every seed run so far: one row per seed from bench.py's guard CSVs, then the mean,
standard error and spread of the paired (same seed) differences.  python collect.py OUT.csv GUARD.csv ...
"""
import sys

import pandas as pd

frame = pd.concat([pd.read_csv(path).assign(csv=path.rsplit("/", 1)[-1]) for path in sys.argv[2:]])
frame = frame[(frame["rows"] == 67349) & frame["mode"].isin(["plain", "fast"])]
twice = frame[frame.duplicated(["seed", "mode"], keep=False)]
if len(twice):
    sys.exit(f"collect.py: seed {twice['seed'].iloc[0]} appears in more than one CSV: {sorted(set(twice['csv']))}")
acc = frame.pivot(index="seed", columns="mode", values="dev_acc")
rate = frame.pivot(index="seed", columns="mode", values="samples_per_s").add_suffix("_samples_per_s")
table = pd.concat([acc[["plain", "fast"]], rate, frame.groupby("seed")["csv"].first()], axis=1).sort_index()
table["diff_points"] = 100 * (table["fast"] - table["plain"])
table.to_csv(sys.argv[1], float_format="%.6g")

d = table["diff_points"]
print(table.drop(columns="csv").round(4).to_string())
print(f"{len(d)} seeds: plain mean {table['plain'].mean():.4f} (SD {100 * table['plain'].std():.2f} points), "
      f"fast mean {table['fast'].mean():.4f} (SD {100 * table['fast'].std():.2f}); fast - plain {d.mean():+.2f} "
      f"points, standard error {d.std() / len(d) ** 0.5:.2f}, SD {d.std():.2f}; "
      f"within 0.5 at {int((d.abs() <= 0.5).sum())} of {len(d)} seeds")
