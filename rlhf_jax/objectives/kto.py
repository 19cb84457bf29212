"""KTO (Ethayarajh et al. 2024): a loss over unpaired responses labelled desirable or undesirable.

With r_theta(x, y) = log pi(y|x) - log pi_ref(y|x) (summed over the response tokens) and the
reference point

    z0 = max(0, mean over the batch of r_theta(x_i, y'_i)),  detached (stop_gradient),

where (x_i, y'_i) is a mismatched pair (example i's prompt with another example's response: an
estimate of KL(pi || pi_ref)), each example has the value

    desirable:    v = lambda_D * sigmoid(beta (r_theta(x, y) - z0))
    undesirable:  v = lambda_U * sigmoid(beta (z0 - r_theta(x, y)))

and the loss is the batch mean of lambda_y - v (docs/rlhf_notes.md section 13). Paper: beta 0.1,
lambda_D n_D / (lambda_U n_U) in [1, 4/3].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def kto_loss(ratio_B, kl_ratio_B, desirable_B, valid_B, beta: float, lambda_d: float, lambda_u: float):
    """(loss, metrics) of a batch of B examples.

    ratio_B: r_theta(x_i, y_i); kl_ratio_B: r_theta(x_i, y'_i) of example i's mismatched pair;
    desirable_B: 1 for a desirable example, 0 for an undesirable one; valid_B: 1 for a real row,
    0 for padding (left out of the mean and of z0). Metrics: kl (the batch mean of the mismatched
    ratios, before clamping), z0, implicit rewards beta * r_theta and values v of the desirable and
    the undesirable examples, and the desirable fraction.
    """
    valid = valid_B.astype(jnp.float32)
    n = jnp.maximum(valid.sum(), 1.0)
    kl = (kl_ratio_B * valid).sum() / n
    z0 = jax.lax.stop_gradient(jnp.maximum(kl, 0.0))  # the reference point carries no gradient
    good = desirable_B.astype(bool)
    value = jnp.where(good, lambda_d * jax.nn.sigmoid(beta * (ratio_B - z0)),
                      lambda_u * jax.nn.sigmoid(beta * (z0 - ratio_B)))
    loss = ((jnp.where(good, lambda_d, lambda_u) - value) * valid).sum() / n
    d, u = good * valid, (~good) * valid
    mean = lambda x, w: (x * w).sum() / jnp.maximum(w.sum(), 1.0)
    metrics = {"kl": kl, "z0": z0,
               "reward_desirable": mean(beta * ratio_B, d), "reward_undesirable": mean(beta * ratio_B, u),
               "value_desirable": mean(value, d), "value_undesirable": mean(value, u),
               "desirable_fraction": d.sum() / n}
    return loss, metrics
