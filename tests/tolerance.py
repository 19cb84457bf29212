"""Float32 tolerances from the computation, not from the last run.

Two float32 evaluations of one expression that differ only in the order of their operations
(vmapped against separate, sharded against one device, fused against manual, a kernel XLA
vectorises for AVX2 against one for AVX-512) each carry the rounding errors of the longest
accumulation chain that reaches the result: n roundings of relative size <= u = eps/2 on
intermediate magnitudes <= s. In the worst case the errors add up, n * u * s per evaluation
(Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., sec. 3.1): `f32_worst`.
Modelled as independent and mean-zero, they grow as sqrt(n): each evaluation is within
lam * sqrt(n) * u * s with probability at least 1 - 2 exp(-lam^2 / 2) per rounding chain
(Higham and Mary, "A new approach to probabilistic rounding error analysis", SIAM J. Sci.
Comput. 41(5), 2019, thm. 2.4). `f32` takes lam = 8 (failure probability 3e-14 per chain,
negligible over the 1e5 coordinates of a test model) and doubles it for two evaluations:
lam * sqrt(n) * eps * s. The worst case is never approached by XLA's reductions (lanes and
trees, not one long sequential chain), and n * eps would make some checks too loose to fail.

For a parameter after optimizer steps the gradient's error passes through the update rule:
  - SGD (with momentum) is linear in the gradient: the parameters differ by at most the
    gradient's relative error times the update, `f32(n, largest update)`.
  - Adam's update lr * m_hat / (sqrt(v_hat) + eps_adam) is homogeneous of degree 0 in the
    gradient when eps_adam is negligible: on a coordinate whose gradient is within rounding
    of zero the update is a coin flip between +lr and -lr, whatever the gradient's error.
    The only bound there is 2 * lr per step (`adam_flip_bound`), which no comparison of two
    runs can fail, so tests that compare Adam runs set eps_adam at or above the gradient
    clip norm: then the update is Lipschitz in the gradient (`adam_lipschitz`).
Growth of a difference through later steps' gradients (lr * |Hessian| per step) is neglected:
it is a factor 1 + O(lr) per step at the learning rates (<= 1e-2) and step counts here.
"""
from __future__ import annotations

import math

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7: the spacing of float32 numbers at 1
LAMBDA = 8.0  # Higham-Mary's confidence parameter: each chain's bound fails with probability <= 3e-14


def f32(n: int, scale: float = 1.0) -> float:
    """How far two orderings of a float32 computation can land apart (probabilistic bound, see
    above): n roundings on the longest accumulation chain, intermediate magnitudes <= `scale`."""
    return LAMBDA * math.sqrt(n) * EPS32 * scale


def f32_worst(n: int, scale: float = 1.0) -> float:
    """The deterministic worst case of `f32`: every rounding error in the same direction."""
    return n * EPS32 * scale


def decoder_chain(d_model: int, d_ff: int, n_layers: int, head_dim: int, seq: int) -> int:
    """Roundings on the longest chain of one decoder forward pass (to the logits or a scalar
    head): per layer the two norms (d each), q/k/v (d), the scores (head_dim), the softmax
    sum (seq), the mix of values (seq), the output projection (d), the MLP (d, then d_ff);
    then the final norm and the head (d each)."""
    per_layer = 2 * d_model + d_model + head_dim + 2 * seq + d_model + d_model + d_ff
    return n_layers * per_layer + 2 * d_model


def gradient_chain(cfg, seq: int, positions: int) -> int:
    """Roundings on the longest chain of a parameter's gradient: the forward pass, the backward
    pass (as long again) and the sum of the per-position contributions over the batch
    (`positions` = sequences x tokens, the loss's mean included)."""
    forward = decoder_chain(cfg.d_model, cfg.d_ff, cfg.n_layers, cfg.head_dim, seq)
    return 2 * forward + positions


def adam_ratio_bound(b1: float, b2: float, t: int) -> float:
    """max |m_hat| / sqrt(v_hat) after t steps (bias-corrected, any gradients): by Cauchy-Schwarz
    (1-b1)/(1-b1^t) * sqrt((1-b2^t)/(1-b2)) * sqrt(sum_{j<t} (b1^2/b2)^j). 1 at t = 1; about 1
    for the first steps when b1^2 <= b2: Adam moves a coordinate by about lr per step at most."""
    r = b1 * b1 / b2
    return (1 - b1) / (1 - b1 ** t) * math.sqrt((1 - b2 ** t) / (1 - b2)) * math.sqrt(sum(r ** j for j in range(t)))


def adam_flip_bound(lrs, b1: float, b2: float) -> float:
    """How far two runs of Adam (eps_adam negligible) can end apart on one coordinate after
    steps at learning rates `lrs`, when that coordinate's gradient is within rounding of zero:
    each step moves it by up to lr * adam_ratio_bound in either direction."""
    return sum(2 * lr * adam_ratio_bound(b1, b2, t + 1) for t, lr in enumerate(lrs))


def adam_lipschitz(b1: float, b2: float, t: int, eps_adam: float) -> float:
    """d(update / lr) / d(gradient) at step t, summed over the t gradients that enter it, for
    Adam with epsilon eps_adam: sum_k a_k / eps + rho * sqrt(w_k) / (4 eps), where a_k and w_k
    are the bias-corrected weights of gradient k in m_hat and v_hat, rho = adam_ratio_bound
    (the second term: |m_hat| <= rho * s, d s / d g_k <= sqrt(w_k) with s = sqrt(v_hat), and
    s / (s + eps)^2 <= 1 / (4 eps))."""
    a = [(1 - b1) * b1 ** (t - 1 - k) / (1 - b1 ** t) for k in range(t)]
    w = [(1 - b2) * b2 ** (t - 1 - k) / (1 - b2 ** t) for k in range(t)]
    rho = adam_ratio_bound(b1, b2, t)
    return (sum(a) + rho * sum(math.sqrt(x) for x in w) / 4) / eps_adam


def adam_steps_tol(lrs, b1: float, b2: float, eps_adam: float, grad_err: float) -> float:
    """Two runs of Adam with eps_adam whose gradients differ by at most grad_err per coordinate
    (and start from the same parameters): how far apart their parameters can end."""
    return sum(lr * adam_lipschitz(b1, b2, t + 1, eps_adam) * grad_err for t, lr in enumerate(lrs))


def forward(cfg, seq: int, values, extra: int = 0) -> float:
    """Two orderings of one decoder forward pass of `cfg` over `seq` tokens (KV cache against the
    full sequence, jit against eager, our kernels against PyTorch's, whose exp / tanh / rsqrt
    differ by an ulp: one rounding each): the forward chain (plus `extra` roundings after it) at
    the largest magnitude of the values compared."""
    chain = decoder_chain(cfg.d_model, cfg.d_ff, cfg.n_layers, cfg.head_dim, seq) + extra
    return f32(chain, float(np.abs(np.asarray(values)).max()))


# The other tolerances of the suite, and why they need no helper:
#  - A float32 loss or metric on a handful of numbers against its value computed by hand in
#    float64 (tests/objectives/: test_ppo_reward_losses.py, test_preference.py, test_inform.py,
#    test_finegrained.py, the aggregators of test_ensemble.py; tests/models/test_precision.py): rel 1e-6 = 8.4 eps32, above the worst
#    case 16 * u = 9.5e-7 of a result of up to 16 roundings; exp / log / tanh differ between
#    instruction sets by an ulp, one rounding each. Results of longer computations use 1e-5.
#  - Statistics computed by numpy / scipy in float64 (tests/eval/: test_stats.py, test_metrics.py,
#    sweep/test_sweep.py, objectives/test_bon.py, eval/test_judge_reliability.py): 1e-9 to 1e-12, far above n * eps64
#    (2.2e-16) at their sizes; pytest.approx's default (rel 1e-6) for exact fractions.
#  - Checks on what a sample or a fit estimates (a rate "about 0.7", a fitted coefficient), not
#    on rounding: their tolerances are sampling error and say so beside them.
