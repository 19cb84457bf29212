"""The InstructGPT pipeline: SFT -> reward model -> PPO, as named variants.

    python -m rlhf_jax.main --config configs/instructgpt.py --workdir runs/tiny          # tiny (default)
    python -m rlhf_jax.main --config configs/instructgpt.py:tiny --workdir runs/tiny --config.ppo.kl_coef=0.02
    python -m rlhf_jax.main --config configs/instructgpt.py:smollm2_hh --workdir runs/smollm2

Variants (the model and data every other config builds on; combine with commas):
  tiny        the offline default: a 2-layer decoder on the built-in task world, all three
              stages on a 2-core CPU in minutes, nothing read from outside the repository.
  micro       tiny, shrunk further for tests.
  smollm2_hh  SmolLM2-135M-Instruct (GGUF from tools/fetch_smollm2.py): SFT on Alpaca,
              RM on HH-RLHF, PPO on HH prompts (needs RLHF_JAX_DATA_DIR); add
              `:smollm2_hh,small` for the reduced CPU size.
  small       the real model at a size a CPU test can afford.
  cpu         with smollm2_hh: the size a 2-core CPU runs in about an hour: 160-token sequences,
              SFT with LoRA adapters (rank 8) for 100 steps on 800 Alpaca demonstrations, the RM
              trained from the shipped model (not from SFT) on 600 HH-RLHF pairs for one epoch,
              25 PPO iterations of 8 episodes of up to 32 tokens.
"""
import ml_collections

from configs.common import base
from configs.variants import Variants
from rlhf_jax import paths

VARIANTS = Variants("configs/instructgpt.py", {
    "tiny": "the offline default on the task world",
    "micro": "tiny, shrunk for tests",
    "smollm2_hh": "SmolLM2-135M-Instruct on Alpaca and HH-RLHF",
    "small": "with smollm2_hh: the reduced CPU size",
    "cpu": "with smollm2_hh: the size a 2-core CPU runs in about an hour",
})


def base_variants(variants: list[str]) -> str | None:
    """The variants of this file among another config's (model and data pass through)."""
    return ",".join(v for v in variants if v in VARIANTS) or None


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = VARIANTS.parse(arg, "tiny")
    c = base()
    c.variant = arg or "tiny"
    if "smollm2_hh" not in variants:  # the task world's RM needs the centring term to stay near 0
        c.rm.center_coef = 0.01
    if "micro" in variants:
        c.data.n_sft, c.data.n_sft_val, c.data.n_rankings, c.data.n_rankings_val = 256, 64, 192, 64
        c.data.n_prompts = 128
        c.model.overrides.d_model, c.model.overrides.d_ff, c.model.overrides.head_dim = 32, 64, 8
        c.sft.epochs, c.sft.batch_size, c.sft.save_every = 1, 32, 4
        c.rm.batch_size, c.rm.save_every = 16, 4
        c.ppo.iterations, c.ppo.batch_size, c.ppo.epochs, c.ppo.save_every = 4, 16, 1, 2
        c.sampling.max_new_tokens = 6
        c.heldout.n_prompts, c.heldout.n_report_samples = 32, 4
        c.log.wandb = "disabled"
    if "smollm2_hh" in variants:
        c.name = "smollm2_hh"
        c.model.preset = ""
        c.model.path = paths.smollm2_spec()  # tools/fetch_smollm2.py puts it there
        c.model.overrides = ml_collections.ConfigDict()
        c.data.source = "files"
        c.data.policy = "skip"
        c.data.sft_train = "corpus:alpaca"
        c.data.rm_train = "corpus:hh_rlhf"
        c.data.prompts = "corpus:hh_rlhf"
        c.data.max_len, c.data.max_prompt_len = 512, 384
        # cut_bucket: an Alpaca row is 113 tokens on average, so a batch of 32 at 512 columns is
        # 78% padding; cut after its longest row it is 317 columns wide on average (docs/stages.md)
        c.sft.update(epochs=1, batch_size=32, lr=1e-5, warmup_steps=20, min_lr_ratio=0.1, eps=1e-5, cut_bucket=64)
        c.rm.update(epochs=1, batch_size=16, lr=9e-6, eps=1e-5, pack=True)  # HH prompts are most of a pair's tokens
        c.dpo.pack = True
        c.sampling.max_new_tokens = 64
        c.ppo.update(iterations=100, batch_size=64, minibatches=4, epochs=1, lr=1e-6,
                     temperature=0.7, kl_coef=0.05, whiten_rewards=True, eps=1e-5)
        c.heldout.n_prompts = 128
    if "cpu" in variants:  # the real model, cut to about an hour on a 2-core CPU
        c.data.max_len, c.data.max_prompt_len = 160, 112
        c.data.n_sft, c.data.n_rankings, c.data.n_prompts, c.data.val_fraction = 800, 600, 400, 0.1
        c.data.rm_from_policy = False
        # cut_bucket 0: batches of 8 at 160 columns cut to 158 on average, not worth a second compile
        c.sft.update(steps=100, batch_size=8, lr=2e-4, warmup_steps=10, lora_rank=8, lora_alpha=16.0, save_every=20,
                     cut_bucket=0)
        c.rm.update(init="base", epochs=1, batch_size=8, lr=2e-5, warmup_steps=5, save_every=15)
        c.ppo.update(iterations=25, batch_size=8, minibatches=1, epochs=1, lr=5e-6, save_every=5)
        c.sampling.max_new_tokens = 32
        c.heldout.update(n_prompts=64, n_report_samples=8)
        c.evaluate.update(n_prompts=64, max_new_tokens=32, batch_size=16)
    if "small" in variants:  # the real model at a size a CPU test can afford
        c.data.max_len, c.data.max_prompt_len = 96, 64
        c.data.n_sft, c.data.n_rankings, c.data.n_prompts = 64, 32, 32
        c.sft.update(steps=4, batch_size=4, save_every=0)
        c.rm.update(steps=4, batch_size=4, save_every=0)
        c.ppo.update(iterations=2, batch_size=4, minibatches=1, save_every=0)
        c.sampling.max_new_tokens = 8
        c.heldout.update(n_prompts=4, n_report_samples=2)
        c.log.wandb = "disabled"
    return c
