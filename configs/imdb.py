"""The DPO paper's IMDb sentiment experiment (Rafailov et al. 2023, Fig. 2 left) at CPU size.

    RLHF_JAX_DATA_DIR=../shared/data python -m rlhf_jax.main --config configs/imdb.py --workdir runs/imdb_dpo
    RLHF_JAX_DATA_DIR=../shared/data python -m rlhf_jax.main --config configs/imdb.py:ppo --workdir runs/imdb_ppo
    RLHF_JAX_DATA_DIR=../shared/data python -m rlhf_jax.main --config configs/imdb.py:ppo_gold --workdir runs/imdb_gold
    RLHF_JAX_DATA_DIR=../shared/data python experiments/dpo_imdb.py     # the frontier: beta and KL sweeps x seeds

The pipeline: `clf`, the gold reward, a sentiment classifier trained on IMDb train reviews
(p(positive) at the last text token); `sft`, a small GPT-2-tokenizer policy fine-tuned for one
epoch on review openings (a 2-8 token prefix and the next tokens to a sentence end, at most 24);
`prefs`, 4 samples of the SFT policy per IMDb test prefix ranked by the classifier (all 6
pairs); then DPO on those rankings, or an RM trained on the same rankings and PPO against it,
or PPO against the classifier itself. Every method is judged by the classifier on held-out
prefixes: mean gold reward and mean sequence KL to the SFT policy.

Variants (combine with commas):
  dpo       clf, sft, prefs, dpo (default)
  ppo       clf, sft, prefs, rm, ppo: PPO against the RM trained on the gold-ranked pairs
  ppo_gold  clf, sft, ppo: PPO against the gold classifier itself
  micro     every size cut for tests (a few steps, a few hundred records)

The paper's sizes (GPT-2 large, a pretrained RoBERTa sentiment classifier, 1 epoch of SFT on
all reviews) are far beyond a 2-core CPU; what is cut is listed in experiments/README.md.
"""
import ml_collections

from configs.common import base
from configs.variants import Variants

VARIANTS = Variants("configs/imdb.py", {
    "dpo": "DPO on the gold-ranked SFT samples (default)",
    "ppo": "an RM on the same rankings, then PPO against it",
    "ppo_gold": "PPO against the gold classifier itself",
    "micro": "sizes cut for tests",
})
METHODS = {"dpo": "clf,sft,prefs,dpo", "ppo": "clf,sft,prefs,rm,ppo", "ppo_gold": "clf,sft,ppo"}
SMALL_MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4, "head_dim": 16, "d_ff": 256,
               "max_seq_len": 64}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = VARIANTS.parse(arg, "dpo")
    methods = [v for v in variants if v in METHODS]
    if len(methods) > 1:
        raise ValueError(f"configs/imdb.py: choose one method, got {methods}")
    method = methods[0] if methods else "dpo"
    c = base()
    c.name, c.variant, c.stages = "imdb", arg or "dpo", METHODS[method]
    c.model.tokenizer = "corpus:gpt2"
    c.model.overrides = ml_collections.ConfigDict(SMALL_MODEL)
    # the readers shuffle, then read only the first `limit` reviews (SFT: 9,500 train + 500 held out)
    c.data.update(source="files", sft_train="corpus:imdb_sft?limit=10000", prompts="corpus:imdb_prefixes?limit=2000",
                  rm_train="stage:prefs", gold="clf", rm_from_policy=False, max_len=32, max_prompt_len=8,
                  n_sft=8000, val_fraction=0.05, n_prompts=1024, n_rankings=768, n_rankings_val=128, k=4)
    c.clf.update(train="corpus:imdb_reviews", test="corpus:imdb_reviews?split=test", n_test=5000, min_len=8, max_len=64,
                 overrides=ml_collections.ConfigDict(SMALL_MODEL), epochs=1, batch_size=64, lr=1e-3)
    c.sft.update(epochs=1, batch_size=64, lr=3e-3, warmup_steps=10, pack=True, save_every=50)
    c.rm.update(epochs=3, batch_size=32, lr=1e-3, warmup_steps=10, center_coef=0.0, save_every=50)
    c.dpo.update(epochs=1, batch_size=32, lr=1e-3, warmup_steps=5, beta=0.1, eval_every=6, save_every=50)
    # rollouts of up to 24 tokens (the SFT policy ends most of them with EOS), drawn with the inverse-CDF
    # sampler (the Gumbel draw over 50,257 tokens is most of a CPU decoding step). The RM is read at the
    # EOS, so a response without one scores -1 against it (below most RM scores); the gold classifier
    # reads any text, so PPO on the gold reward keeps its score (no penalty)
    c.sampling.update(max_new_tokens=24, sampler="inverse_cdf")
    c.ppo.update(iterations=32, batch_size=32, minibatches=2, epochs=2, lr=1e-3, kl_coef=0.05,
                 missing_eos_penalty=-1.0, save_every=20,
                 reward="gold" if method == "ppo_gold" else "rm")
    if method == "ppo_gold":
        c.ppo.missing_eos_penalty = None
    c.heldout.update(n_prompts=256, n_report_samples=8)
    if "micro" in variants:
        # the readers read only the first rows of their shuffled order
        c.data.update(sft_train="corpus:imdb_sft?limit=1500", prompts="corpus:imdb_prefixes?limit=300", n_sft=256,
                      n_prompts=96, n_rankings=64, n_rankings_val=32)
        c.clf.update(train="corpus:imdb_reviews?limit=512", test="corpus:imdb_reviews?split=test&limit=128",
                     steps=16, batch_size=32, save_every=8)
        c.sft.update(batch_size=32, save_every=4)
        c.rm.update(epochs=1, batch_size=16, save_every=4)
        c.dpo.update(batch_size=16, eval_every=2, save_every=4)
        c.ppo.update(iterations=3, batch_size=16, epochs=1, save_every=2)
        c.sampling.max_new_tokens = 16
        c.heldout.update(n_prompts=32, n_report_samples=4)
        c.log.wandb = "disabled"
    return c
