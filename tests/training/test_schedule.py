import math

import pytest
import torch

from transformer.config import TrainConfig
from transformer.training.schedule import build_scheduler, inverse_sqrt, noam, warmup_constant, warmup_cosine


def test_noam_matches_the_paper_formula():
    d, w = 512, 4000
    for step in (1, 100, w, 4 * w):
        assert noam(step, d_model=d, warmup_steps=w) == pytest.approx(d**-0.5 * min(step**-0.5, step * w**-1.5))
    # Peak at the end of warmup; halves by 4x warmup.
    peak = noam(w, d_model=d, warmup_steps=w)
    assert noam(w - 1, d_model=d, warmup_steps=w) < peak and noam(w + 1, d_model=d, warmup_steps=w) < peak
    assert noam(4 * w, d_model=d, warmup_steps=w) == pytest.approx(peak / 2)


def test_inverse_sqrt_warms_up_linearly_then_decays():
    w = 1000
    assert inverse_sqrt(1, warmup_steps=w) == pytest.approx(1 / w)
    assert inverse_sqrt(w // 2, warmup_steps=w) == pytest.approx(0.5)
    assert inverse_sqrt(w, warmup_steps=w) == pytest.approx(1.0)
    assert inverse_sqrt(4 * w, warmup_steps=w) == pytest.approx(0.5)


def test_cosine_ends_at_min_ratio_and_is_monotone_after_warmup():
    w, total = 10, 110
    values = [warmup_cosine(s, warmup_steps=w, total_steps=total, min_ratio=0.1) for s in range(1, total + 1)]
    assert values[w - 1] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.1)
    assert warmup_cosine(w + 50, warmup_steps=w, total_steps=total, min_ratio=0.0) == pytest.approx(0.5)
    after = values[w - 1 :]
    assert all(a >= b for a, b in zip(after, after[1:]))


def test_constant_schedule():
    assert warmup_constant(5, warmup_steps=10) == pytest.approx(0.5)
    assert warmup_constant(1000, warmup_steps=10) == 1.0


@pytest.mark.parametrize("schedule", ["noam", "inverse_sqrt", "cosine", "constant"])
def test_scheduler_first_update_uses_step_one(schedule):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=2.0)
    cfg = TrainConfig(schedule=schedule, warmup_steps=4, lr=2.0)
    sched = build_scheduler(opt, cfg, d_model=16, total_steps=20)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected_first = {"noam": 2.0 * noam(1, d_model=16, warmup_steps=4), "inverse_sqrt": 0.5, "cosine": 0.5, "constant": 0.5}
    assert lrs[0] == pytest.approx(expected_first[schedule])
    assert lrs[0] > 0
    assert max(lrs) == pytest.approx(lrs[3])  # peak at update 4 = warmup
    assert not math.isnan(sum(lrs))
