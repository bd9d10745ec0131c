"""Which part of a DistilBERT training step breaks CUDA graph capture? One variant per process."""
import sys, subprocess
import torch
import torch.nn.functional as F

def run(variant):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification
    opts = set(variant.split("+"))
    dev = torch.device("cuda")
    torch.manual_seed(0)
    if "mlp" in opts:
        model = torch.nn.Sequential(torch.nn.Embedding(1000, 64), torch.nn.Flatten(), torch.nn.Linear(64 * 24, 2)).to(dev)
        call = lambda ids, mask: model(ids)
    else:
        drop = 0.0 if "nodrop" in opts else 0.1
        cfg = DistilBertConfig(vocab_size=30522, num_labels=2, dim=32, hidden_dim=64, n_layers=2, n_heads=2,
                               dropout=drop, attention_dropout=drop, seq_classif_dropout=drop,
                               attn_implementation="eager" if "eager" in opts else "sdpa")
        model = DistilBertForSequenceClassification(cfg).to(dev)
        call = lambda ids, mask: model(input_ids=ids, attention_mask=None if "nomask" in opts else mask).logits
    model.train()
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW(params, lr=5e-5, fused=True, capturable=True)
    ids = torch.randint(1, 1000, (32, 24), device=dev)
    mask = torch.ones(32, 24, dtype=torch.long, device=dev); mask[:, 20:] = 0
    labels = torch.randint(0, 2, (32,), device=dev)
    def step():
        ctx = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if "bf16" in opts else torch.autocast("cuda", enabled=False)
        with ctx:
            logits = call(ids, mask)
        loss = F.cross_entropy(logits.float(), labels)
        if "grad" in opts:
            grads = torch.autograd.grad(loss, params)
            for p, g in zip(params, grads):
                p.grad = g
        else:
            loss.backward()
        opt.step()
        return loss
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    opt.zero_grad(set_to_none=True)
    g = torch.cuda.CUDAGraph()
    kw = {"stream": side} if "same" in opts else {}
    with torch.cuda.graph(g, **kw):
        loss = step()
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    print("OK", float(loss))

if len(sys.argv) > 1:
    run(sys.argv[1])
else:
    for v in ["mlp", "mlp+grad", "sdpa", "sdpa+same", "sdpa+grad", "eager", "eager+grad", "sdpa+nomask", "sdpa+nodrop",
              "eager+nodrop", "sdpa+nomask+nodrop", "mlp+bf16", "sdpa+bf16+grad"]:
        p = subprocess.run([sys.executable, __file__, v], capture_output=True, text=True)
        err = [l for l in (p.stdout + p.stderr).splitlines() if "OK" in l or "Error" in l]
        print(f"DIAG {v:22s} rc={p.returncode} {err[-1][:150] if err else (p.stderr[-300:])}", flush=True)
