"""Writes schedule_golden.json: learning rates of torch.optim.lr_scheduler's CosineAnnealingLR and
MultiStepLR, the two schedules the paper's code (PotatoTian/recall-semseg,
ptsemseg/schedulers/__init__.py: "cosine_annealing", "multi_step") offers besides its constant and
poly ones. Like the paper's train.py, the scheduler is stepped once per iteration, so the rate of
step s + 1 is the one after s calls of scheduler.step() (recallseg's LrSchedule::lr(s)).

Warm-up is recallseg's (not the paper code's WarmUpLR): for s < W the rate is lr · (s + 1) / W,
which is torch's LinearLR(start_factor=1/W, end_factor=1, total_iters=W-1); from step W on, the
main scheduler's rate at the same step s (its clock counts from the first step). The script takes
the warm-up rates from LinearLR and the rest from the main scheduler, each stepped from 0.

Run: .venv-peer/bin/python crates/trainer/tests/golden/make_schedule_golden.py
"""
import json, pathlib
import torch


def rates(make, base, n):
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=base)
    sched = make(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


cases = [
    dict(name="cosine", kind="cosine", base=0.01, iters=50, warmup_iters=0, min_lr=0.0,
         milestones=[], gamma=0.1),
    dict(name="cosine_min_lr_warmup", kind="cosine", base=2e-3, iters=40, warmup_iters=5,
         min_lr=1e-4, milestones=[], gamma=0.1),
    dict(name="multi_step", kind="multi_step", base=0.1, iters=30, warmup_iters=0, min_lr=0.0,
         milestones=[10, 20, 25], gamma=0.1),
    dict(name="multi_step_gamma_warmup", kind="multi_step", base=1e-3, iters=30, warmup_iters=4,
         min_lr=0.0, milestones=[3, 12, 13], gamma=0.5),
]
out = []
for c in cases:
    n = c["iters"] + 1  # every step of the run and the one past its end
    if c["kind"] == "cosine":
        main = rates(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(
            o, T_max=c["iters"], eta_min=c["min_lr"]), c["base"], n)
    else:
        main = rates(lambda o: torch.optim.lr_scheduler.MultiStepLR(
            o, milestones=c["milestones"], gamma=c["gamma"]), c["base"], n)
    w = c["warmup_iters"]
    if w > 0:
        warm = rates(lambda o: torch.optim.lr_scheduler.LinearLR(
            o, start_factor=1.0 / w, end_factor=1.0, total_iters=max(w - 1, 1)), c["base"], w)
        main[:w] = warm
    c["steps"] = list(range(n))
    c["lrs"] = main
    out.append(c)
path = pathlib.Path(__file__).with_name("schedule_golden.json")
path.write_text(json.dumps(out, indent=1))
print("wrote", path, "torch", torch.__version__)
