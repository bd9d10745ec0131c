import sys, subprocess, os
sys.path.insert(0, ".")
VARIANTS = ["base", "grad", "noeval", "norestore", "norng", "stream", "override", "nopin"]
if len(sys.argv) > 1:
    sys.path.insert(0, ".gpu-carry")
    import patches
    patches.apply(sys.argv[1].split("+"))
    from distil_kit import RunConfig, finetune
    from distil_kit.modeling import save_random_distilbert
    if not os.path.exists("/tmp/tiny/config.json"):
        save_random_distilbert("/tmp/tiny", ".gpu-carry/minilm", tiny=True)
    finetune(RunConfig.from_dict(dict(model="/tmp/tiny", data_dir=".gpu-carry/sst2", output_dir="/tmp/bis-" + sys.argv[1],
        epochs=1, max_train_samples=256, target_acc=None, save_model=False, fast=True, compile=False, overwrite=True)))
    print("KITOK")
else:
    for v in VARIANTS:
        p = subprocess.run([sys.executable, __file__, v], capture_output=True, text=True)
        out = p.stdout + p.stderr
        err = [l for l in out.splitlines() if "KITOK" in l or "Error" in l or "override" in l]
        print(f"BISECT {v:16s} rc={p.returncode} {' | '.join(err[:2])[:200]}", flush=True)
