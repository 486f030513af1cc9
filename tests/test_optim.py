"""Schedules against hand-written lists, Ranger against its equations, label smoothing, early stopping."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landscape.training.optim import Ranger, make_optimizer
from landscape.training.schedules import lr_at_epoch
from landscape.training.loop import LockstepRuns
from landscape.training.runner import EarlyStopping


def rates(n, **kw):
    return [round(lr_at_epoch(0.1, e, epochs=n, **kw), 12) for e in range(n)]


def test_constant():
    assert rates(3) == [0.1, 0.1, 0.1]


def test_step_schedule_as_report_004():
    # StepLR(step_size=5, gamma=0.5)
    assert rates(12, schedule="step", step_size=5, gamma=0.5) == [0.1] * 5 + [0.05] * 5 + [0.025] * 2


def test_multistep_as_resnet20():
    got = rates(8, schedule="multistep", milestones=(3, 6), gamma=0.1)
    assert got == [0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001]


def test_cosine_with_extra_epochs_as_report_000():
    # T_max = epochs + 20: the rate is still positive at the end
    got = rates(4, schedule="cosine", cosine_extra=2)
    expected = [0.1 * (1 + math.cos(math.pi * e / 6)) / 2 for e in range(4)]
    assert got == pytest.approx(expected) and got[-1] > 0


def test_warmup():
    assert rates(4, warmup_epochs=2) == [0.05, 0.1, 0.1, 0.1]


@pytest.mark.parametrize("kw,scheduler", [
    (dict(schedule="step", step_size=3, gamma=0.3), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.3)),
    (dict(schedule="multistep", milestones=(2, 5), gamma=0.5), lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [2, 5], 0.5)),
    (dict(schedule="cosine", cosine_extra=20), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 30)),
])
def test_schedules_agree_with_torch_schedulers(kw, scheduler):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = scheduler(opt)
    for epoch in range(10):
        assert lr_at_epoch(0.1, epoch, epochs=10, **kw) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()


def test_ranger_follows_its_equations():
    """RAdam (Liu et al. 2020) + gradient centralization + Lookahead(k=6, alpha=0.5), written out."""
    torch.manual_seed(0)
    target = torch.randn(3, 4)
    w0 = torch.randn(3, 4)
    b0 = torch.randn(4)
    lr, b1, b2, eps, k, alpha = 0.01, 0.95, 0.999, 1e-5, 6, 0.5

    def grads(w, b):
        return 2 * (w - target), 2 * b  # loss = ||w - target||^2 + ||b||^2

    params = [torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())]
    opt = Ranger(params, lr=lr)
    # by hand
    fast = [w0.double(), b0.double()]
    slow = [x.clone() for x in fast]
    m = [torch.zeros_like(x) for x in fast]
    v = [torch.zeros_like(x) for x in fast]
    rho_inf = 2 / (1 - b2) - 1
    for t in range(1, 14):
        for p in params:
            p.grad = None
        loss = ((params[0] - target) ** 2).sum() + (params[1] ** 2).sum()
        loss.backward()
        opt.step()
        g = list(grads(fast[0], fast[1]))
        g[0] = g[0] - g[0].mean(dim=1, keepdim=True)  # centralize weights with more than one axis
        rho_t = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
        for i in range(2):
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            m_hat = m[i] / (1 - b1 ** t)
            if rho_t > 5:
                r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
                v_hat_sqrt = torch.sqrt(v[i]) / math.sqrt(1 - b2 ** t)
                fast[i] = fast[i] - lr * m_hat * r / (v_hat_sqrt + eps / math.sqrt(1 - b2 ** t))
            else:
                fast[i] = fast[i] - lr * m_hat
        if t % k == 0:
            for i in range(2):
                slow[i] = slow[i] + alpha * (fast[i] - slow[i])
                fast[i] = slow[i].clone()
        for p, f in zip(params, fast):
            assert torch.allclose(p.detach().double(), f, atol=1e-6), f"step {t}"


def test_ranger_state_round_trips():
    p = torch.nn.Parameter(torch.ones(2, 2))
    opt = make_optimizer("ranger", [p], lr=0.1)
    for _ in range(3):
        p.grad = torch.ones(2, 2)
        opt.step()
    other = make_optimizer("ranger", [torch.nn.Parameter(torch.ones(2, 2))], lr=0.1)
    other.load_state_dict(opt.state_dict())
    assert other.lookahead_steps == 3 and torch.equal(other.state[other.param_groups[0]["params"][0]]["slow"],
                                                        opt.state[p]["slow"])


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                      ("radam", torch.optim.RAdam), ("ranger", Ranger)])
def test_optimizer_names(name, cls):
    opt = make_optimizer(name, [torch.nn.Parameter(torch.ones(1))], lr=0.1, weight_decay=0.01, eps=1e-6)
    assert isinstance(opt, cls) and opt.param_groups[0]["lr"] == 0.1


def test_label_smoothing_matches_the_formula():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 4)
    x, y = torch.randn(8, 5), torch.randint(0, 4, (8,))
    eps = 0.2
    with torch.no_grad():
        logp = F.log_softmax(model(x), dim=1)
    # (1 - eps) * NLL of the label + eps * mean over classes of -log p
    expected = ((1 - eps) * -logp[torch.arange(8), y] + eps * -logp.mean(dim=1)).mean()
    runs = LockstepRuns([model], [torch.optim.SGD(model.parameters(), lr=0.0)], label_smoothing=eps)
    loss, _, _ = runs.train_step(x, y)
    assert loss[0].item() == pytest.approx(expected.item(), rel=1e-6)


def test_early_stopping_on_a_scripted_sequence():
    # report 004: patience 5, min delta 0.1 %; run 0 stalls after epoch 3, run 1 keeps improving
    accs = np.array([[0.50, 0.60, 0.70, 0.7005, 0.69, 0.70, 0.7009, 0.65, 0.90],
                     [0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80, 0.90]])
    early = EarlyStopping(2, patience=5, min_delta=0.001)
    stops = [early.update(accs[:, e]) for e in range(accs.shape[1])]
    first_stop = [next((e + 1 for e, s in enumerate(stops) if s[r]), None) for r in range(2)]
    assert first_stop == [8, None]  # epochs 4-8 give no gain above 0.001 over 0.70


def test_early_stopping_off_never_stops():
    early = EarlyStopping(1, patience=0, min_delta=0.0)
    assert not any(early.update(np.array([0.5]))[0] for _ in range(20))
