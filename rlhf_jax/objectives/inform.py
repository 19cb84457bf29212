"""InfoRM loss (Miao et al. 2024; docs/rlhf_notes.md section 5): Bradley-Terry on the decoded latent
plus beta times the KL of the latent posterior to N(0, I).

Two forms of the KL term:
- "per_dim_sum" (the paper): KL(N(mu, sigma^2) || N(0, I)) summed over the L latent
  dimensions, added for both responses of every pair (K-wise rankings: for both members of
  each of the prompt's pairs, averaged like the pairs' losses);
- "mean_then_kl" (the released code): mu and log sigma^2 first averaged over the latent
  dimensions, then a one-dimensional Gaussian KL, averaged over every response of the batch.
  A much weaker bottleneck.
"""
from __future__ import annotations

import jax.numpy as jnp

from rlhf_jax.objectives.reward import bradley_terry_loss, pair_matrix
from rlhf_jax.registry import Registry

KL_FORMS = Registry("kl_form")  # fn(mu_BxKxL, logvar_BxKxL) -> kl_BxK


def gaussian_kl(mu, logvar):
    """Elementwise KL(N(mu, exp(logvar)) || N(0, 1))."""
    return 0.5 * (mu ** 2 + jnp.exp(logvar) - 1.0 - logvar)


@KL_FORMS.register("per_dim_sum")
def per_dim_sum(mu_BxKxL, logvar_BxKxL):
    """The paper's: the Gaussian KL summed over the latent dimensions."""
    return gaussian_kl(mu_BxKxL, logvar_BxKxL).sum(-1)


@KL_FORMS.register("mean_then_kl")
def mean_then_kl(mu_BxKxL, logvar_BxKxL):
    """The released code's: mu and log sigma^2 averaged over the dimensions, then a 1-D KL."""
    return gaussian_kl(mu_BxKxL.mean(-1), logvar_BxKxL.mean(-1))


def latent_kl(mu_BxKxL, logvar_BxKxL, form: str = "per_dim_sum"):
    """kl_BxK: one number per response, in the given form (a name in KL_FORMS)."""
    return KL_FORMS[form](mu_BxKxL, logvar_BxKxL)


def inform_loss(scores_BxK, mu_BxKxL, logvar_BxKxL, ranks_BxK, valid_BxK, beta: float = 0.1,
                form: str = "per_dim_sum", margin: float = 0.0, center_coef: float = 0.0):
    """(loss, metrics): the Bradley-Terry loss of `scores` (decoded from sampled z) + beta * KL."""
    bt, metrics = bradley_terry_loss(scores_BxK, ranks_BxK, valid_BxK, margin, center_coef)
    kl = latent_kl(mu_BxKxL, logvar_BxKxL, form)
    if form == "per_dim_sum":
        wins = pair_matrix(ranks_BxK, valid_BxK)
        n_pairs = wins.sum((1, 2))
        has = (n_pairs > 0).astype(jnp.float32)
        per_prompt = ((kl[:, :, None] + kl[:, None, :]) * wins).sum((1, 2)) / jnp.maximum(n_pairs, 1.0)
        kl_term = (per_prompt * has).sum() / jnp.maximum(has.sum(), 1.0)
    else:
        valid = valid_BxK.astype(jnp.float32)
        kl_term = (kl * valid).sum() / jnp.maximum(valid.sum(), 1.0)
    return bt + beta * kl_term, {**metrics, "bt_loss": bt, "latent_kl": kl_term}
