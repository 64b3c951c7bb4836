"""Writes optim_golden.json: parameter trajectories of torch.optim.Adam / AdamW / SGD in float64.

Each case minimises loss_k(θ) = Σ ½·a·θ² + g_k·θ for five steps (a and g_k fixed, per element),
so the gradient a·θ + g_k depends on the trajectory. The Rust test replays the same losses through
recallseg_trainer::optim and compares every step to 1e-12.

Run: .venv-peer/bin/python crates/trainer/tests/golden/make_optim_golden.py
"""
import json, math, pathlib
import torch

torch.set_default_dtype(torch.float64)
N, STEPS = 7, 5
theta0 = [math.sin(1.3 * i + 0.2) for i in range(N)]
a = [0.5 + 0.25 * i for i in range(N)]
g = [[math.cos(0.7 * i + 1.1 * k) * (1 + 0.1 * k) for i in range(N)] for k in range(STEPS)]
lrs = [0.1 * (1 - 0.15 * k) for k in range(STEPS)]  # a changing rate, as a schedule gives

cases = [
    ("adam", dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)),
    ("adam_wd", dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
    ("adamw", dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)),
    ("sgd", dict(momentum=0.0, weight_decay=0.0)),
    ("sgd_momentum", dict(momentum=0.9, weight_decay=0.01)),
    ("sgd_nesterov", dict(momentum=0.9, weight_decay=0.0, nesterov=True)),
]
out = {"theta0": theta0, "a": a, "g": g, "lrs": lrs, "cases": []}
for name, kw in cases:
    p = torch.nn.Parameter(torch.tensor(theta0))
    if name.startswith("adamw"):
        opt = torch.optim.AdamW([p], lr=lrs[0], **kw)
    elif name.startswith("adam"):
        opt = torch.optim.Adam([p], lr=lrs[0], **kw)
    else:
        opt = torch.optim.SGD([p], lr=lrs[0], **kw)
    traj = []
    for k in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = lrs[k]
        opt.zero_grad()
        loss = (0.5 * torch.tensor(a) * p * p + torch.tensor(g[k]) * p).sum()
        loss.backward()
        opt.step()
        traj.append(p.detach().tolist())
    d = {"name": name, "trajectory": traj}
    d.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()})
    out["cases"].append(d)
path = pathlib.Path(__file__).with_name("optim_golden.json")
path.write_text(json.dumps(out, indent=1))
print("wrote", path)
