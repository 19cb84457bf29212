"""tools/trl_reward_baseline.py hands TRL the learning rates our rm stage trains with: HF's
scheduler, stepped as the Trainer steps it, against rlhf_jax.train.optim.schedule step by step."""
import types

import numpy as np
import pytest

from rlhf_jax.train.optim import schedule
from tools.trl_reward_baseline import load_config, schedule_args


def hf_rates(args: dict, lr: float, warmup: int, total: int) -> list[float]:
    """The learning rate of each of `total` optimizer steps under HF's scheduler (the Trainer calls
    scheduler.step() after each optimizer.step())."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = transformers.get_scheduler(args["lr_scheduler_type"], opt, num_warmup_steps=warmup,
                                       num_training_steps=total,
                                       scheduler_specific_kwargs=args.get("lr_scheduler_kwargs"))
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


# optax evaluates the schedule in float32 (HF in float64): a few float32 ulps (1.2e-7 each) of the
# rate, and near the end of a decay to 0, where 1 + cos(x) cancels, a few float32 epsilons of lr
RTOL, EPS32 = 1e-6, float(np.finfo(np.float32).eps)


@pytest.mark.parametrize("kind,min_ratio", [("cosine", 0.1), ("cosine", 0.0), ("constant", 0.1)])
def test_hf_gets_our_schedule(kind, min_ratio):
    lr, warmup, total = 2e-5, 5, 125  # the real-model proxy RM's: 1,000 pairs in batches of 8
    ours = [float(schedule(lr, total, warmup, kind, min_ratio)(i)) for i in range(total)]
    theirs = hf_rates(schedule_args(types.SimpleNamespace(schedule=kind, min_lr_ratio=min_ratio)), lr, warmup, total)
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=4 * EPS32 * lr)


def test_the_real_model_rm_and_plain_cosine_differ():
    """The proxy RM decays to a tenth of its rate; HF's plain "cosine" (what the tool passed before)
    decays to 0, about 0.1 * lr lower at the end and 0.05 * lr on average."""
    c = load_config("experiments/configs/real_model.py:proxy,cpu,chat")
    r = c.rm
    assert (r.schedule, r.min_lr_ratio) == ("cosine", 0.1)
    total = r.epochs * (c.data.n_rankings // r.batch_size)  # as the tool counts its steps
    ours = np.array([float(schedule(r.lr, total, r.warmup_steps, r.schedule, r.min_lr_ratio)(i)) for i in range(total)])
    plain = np.array(hf_rates({"lr_scheduler_type": "cosine"}, r.lr, r.warmup_steps, total))
    np.testing.assert_allclose(ours, hf_rates(schedule_args(r), r.lr, r.warmup_steps, total), rtol=RTOL,
                               atol=4 * EPS32 * r.lr)
    assert ours[-1] - plain[-1] > 0.09 * r.lr and (ours - plain).mean() > 0.04 * r.lr


def test_an_unknown_schedule_is_refused():
    with pytest.raises(SystemExit, match="rm.schedule 'linear' has no HF counterpart here; valid: cosine, constant"):
        schedule_args(types.SimpleNamespace(schedule="linear", min_lr_ratio=0.1))
