"""Preference optimisation in place of RM + PPO: SFT, then a preference loss on the same rankings
the RM would see.

    python -m rlhf_jax.main --config configs/dpo.py --workdir runs/dpo                 # DPO, tiny world
    python -m rlhf_jax.main --config configs/dpo.py:ipo --workdir runs/ipo
    python -m rlhf_jax.main --config configs/dpo.py:simpo --workdir runs/simpo
    python -m rlhf_jax.main --config configs/dpo.py:cdpo --workdir runs/cdpo --config.dpo.beta=0.5
    python -m rlhf_jax.main --config configs/dpo.py:kto --workdir runs/kto

Variants (combine with commas): the loss, any registered in
rlhf_jax.objectives.preference.PREFERENCE_LOSSES: dpo (default), cdpo, robust, ipo, simpo (beta 2,
gamma 1: Meng et al.'s range), orpo (lambda 0.1); mean (per-token mean of the log-probs instead
of the sum, DPO family); live_ref (reference log-probs on the fly instead of cached); online
(online DPO, stage online_dpo: pairs sampled from the current policy every iteration and
labelled by the RM; stages sft,rm,online_dpo; a loss variant sets online_dpo's loss) and
online,gold_reward (labelled by the task world's gold reward; stages sft,online_dpo); kto (stage
kto in place of dpo: KTO on the same rankings as unpaired desirable / undesirable examples); and any
variant of configs/instructgpt.py (tiny, micro, smollm2_hh, small) for the model and data.

    python -m rlhf_jax.main --config configs/dpo.py:tiny,online --workdir runs/odpo
"""
from configs import instructgpt
from configs.variants import Variants
from rlhf_jax.objectives.preference import PREFERENCE_LOSSES

# what a loss variant sets besides dpo.loss (any other registered loss is a variant that sets only that)
LOSS_SETTINGS = {
    "dpo": "DPO", "cdpo": "conservative DPO (label smoothing 0.1)", "robust": "robust DPO (eps 0.1)",
    "ipo": "IPO (beta plays tau)", "simpo": "SimPO (reference-free, beta 2, gamma 1)",
    "orpo": "ORPO (reference-free, SFT + odds-ratio term, lambda 0.1)"}
OTHER = {"mean": "per-token mean of the response log-probs (DPO family)",
         "live_ref": "reference log-probs computed live, not cached",
         "online": "online DPO: pairs sampled from the current policy each iteration, labelled by the RM",
         "gold_reward": "with online: the gold reward labels the pairs (no RM stage)",
         "kto": "KTO (stage kto in place of dpo) on the rankings converted to unpaired binary feedback"}
# the preference-loss fields a loss variant sets, for the dpo block and (with `online`) the online_dpo block
LOSS_FIELDS = ("loss", "beta", "label_smoothing", "logprob_reduction", "simpo_gamma", "orpo_lambda")


def variants() -> Variants:
    """instructgpt.py's variants, every registered preference loss (read when called, so a loss
    registered later is a variant too), mean and live_ref."""
    losses = {name: LOSS_SETTINGS.get(name) or (PREFERENCE_LOSSES[name].fn.__doc__ or name).strip().splitlines()[0]
              for name in PREFERENCE_LOSSES}
    return instructgpt.VARIANTS | Variants("configs/dpo.py", {**losses, **OTHER})


VARIANTS = variants()


def get_config(arg: str | None = None):
    chosen = variants().parse(arg, "dpo")
    c = instructgpt.get_config(instructgpt.base_variants(chosen))
    c.name = "dpo"
    c.variant = arg or "dpo"
    c.stages = "sft,dpo"
    losses = [v for v in chosen if v in PREFERENCE_LOSSES]
    if len(losses) > 1:
        raise ValueError(f"configs/dpo.py: choose one loss, got {losses}")
    c.dpo.loss = losses[0] if losses else "dpo"
    if c.dpo.loss in ("cdpo", "robust"):
        c.dpo.label_smoothing = 0.1
    if c.dpo.loss == "simpo":
        c.dpo.update(beta=2.0, simpo_gamma=1.0)
    if "kto" in chosen:
        c.name = "kto"
        c.stages = "sft,kto"
    if "mean" in chosen:
        c.dpo.logprob_reduction = "mean"
    if "live_ref" in chosen:
        c.dpo.cache_reference = False
    if "micro" in chosen:
        c.dpo.update(batch_size=16, save_every=4)
        c.kto.update(batch_size=16, save_every=4)
    if "smollm2_hh" in chosen:
        c.dpo.update(batch_size=16, lr=5e-7, warmup_steps=150, optimizer="rmsprop")
        c.kto.update(batch_size=16, lr=5e-7, warmup_steps=150, optimizer="rmsprop")  # DPO's, for a like comparison
    if "small" in chosen:
        c.dpo.update(steps=4, batch_size=4, warmup_steps=0, save_every=0)
        c.kto.update(steps=4, batch_size=4, warmup_steps=0, save_every=0)
    if "kto" in chosen and "online" in chosen:
        raise ValueError("configs/dpo.py: choose one of kto and online")
    if "gold_reward" in chosen and "online" not in chosen:
        raise ValueError("configs/dpo.py: gold_reward is a variant of online DPO: use online,gold_reward")
    if "online" in chosen:
        online(c, chosen)
    return c


def online(c, chosen: list[str]) -> None:
    """Online DPO in place of offline DPO: SFT, the RM (the annotator) and stage online_dpo with
    the loss variant's fields; with gold_reward the task world's gold reward labels the pairs."""
    c.name = "online_dpo"
    c.online_dpo.update({k: c.dpo[k] for k in LOSS_FIELDS})
    gold = "gold_reward" in chosen
    c.online_dpo.reward = "gold" if gold else "rm"
    c.stages = "sft,online_dpo" if gold else "sft,rm,online_dpo"
    if "micro" in chosen:
        c.online_dpo.update(iterations=3, batch_size=8, minibatches=2, epochs=1, save_every=2)
