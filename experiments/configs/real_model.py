"""The real-model experiment's runs (experiments/real_model.py): SmolLM2-135M-Instruct on disjoint
parts of the HH-RLHF harmless-base pairs.

    python -m rlhf_jax.main --config experiments/configs/real_model.py:proxy,cpu --workdir runs/proxy
    python -m rlhf_jax.main --config experiments/configs/real_model.py:gold,smoke --workdir /tmp/gold

The 1,992 valid pairs of corpus:hh_rlhf (8 of the file's 2,000 are skipped as malformed) are cut
by row into parts no run mixes (`LAYOUT`, `layout`):
- held-out [0:200): every RM's and DPO's validation pairs (data.rm_val); their prompts (the last
  heldout.n_prompts of them) are the held-out prompts best-of-n, PPO's and DPO's final
  evaluation and stage eval sample on;
- proxy [200:1200): the proxy RM's and DPO's 1,000 training pairs; PPO's training prompts are
  the prompts of their first data.n_prompts rows;
- gold [1200:1992): the gold RM's training pairs (two epochs), a judge the policies never see.

Variants (comma-separated):
  proxy   (default) the proxy RM, DPO, PPO and best-of-n runs: rm_train = the proxy part
  gold    the gold RM: rm_train = the gold part, two epochs
  cpu     (default) configs/instructgpt.py:smollm2_hh,cpu: 160-token pairs, batch 8, LoRA rank 8
  smoke   a random-init Llama-shaped decoder (2 layers, d_model 32, GPT-2 tokenizer) on the same
          HH rows at a few steps: the whole chain in CI, where the GGUF is absent
  chat    the HH conversations as chat messages (corpus:hh_rlhf?form=chat) in the model's own template,
          and 64 new tokens, room for a chat model to answer and stop (without it, the prompts are the raw
          "Human: ... Assistant:" transcripts and 32 new tokens, the setting of the first seed-0 runs)
  seed<N> config.seed = N (for tools that take a config and no overrides: tools/trl_reward_baseline.py)

Every run starts from the base model: stage sft is one LoRA step at learning rate 0 (the first
step of a one-step warmup), so its checkpoint IS the base model and the stages that read "the
SFT policy" (PPO, DPO, best-of-n, the evaluation's baseline) read the start.
"""
import ml_collections

from configs import instructgpt
from configs.variants import Variants

VARIANTS = Variants("experiments/configs/real_model.py", {
    "proxy": "the proxy RM / policy runs (default)",
    "gold": "the gold RM on its own pairs",
    "cpu": "SmolLM2-135M-Instruct at the 2-core CPU size (default)",
    "smoke": "a random-init tiny decoder with the GPT-2 tokenizer, a few steps",
    "chat": "the HH conversations in the model's chat template, 64 new tokens",
}, numeric={"seed": "config.seed"})

SOURCE = "corpus:hh_rlhf"
# [start, stop) rows of SOURCE (its 2,000 pairs) per part; the smoke size keeps the cuts, smaller counts
# (rows of its valid records: data.policy = "skip" drops 8 of the file's 2,000, so 1,992 remain)
LAYOUT = {"heldout": (0, 200), "proxy": (200, 1200), "gold": (1200, 1992)}
SMOKE_PAIRS = {"heldout": 16, "proxy": 32, "gold": 48}  # rows of each part at the smoke size (see `part`)


def part(name: str, n: int | None = None, source: str = SOURCE) -> str:
    """The source spec of a part, or of n of its rows: the first n, the last n of the held-out
    part (its prompts end where PPO's begin: data.prompts is one contiguous slice)."""
    start, stop = LAYOUT[name]
    if n is not None:
        start, stop = (max(start, stop - n), stop) if name == "heldout" else (start, min(stop, start + n))
    return f"{source}[{start}:{stop}]"


def layout(c) -> dict:
    """{part: [start, stop)} of the rows a config's runs read, for the results JSON and the
    disjointness check: RM / DPO train, held-out pairs, held-out prompts, PPO prompts."""
    from rlhf_jax.data.run_data import split_slice
    rows = lambda spec: list(split_slice(spec)[1:])
    train = rows(c.data.rm_train)
    prompts = rows(c.data.prompts)
    n_eval = c.heldout.n_prompts
    return {"rm_train": [train[0], train[0] + min(c.data.n_rankings, train[1] - train[0])],
            "rm_val": rows(c.data.rm_val),
            "eval_prompts": [prompts[0], prompts[0] + n_eval],
            "ppo_prompts": [prompts[0] + n_eval, min(prompts[1], prompts[0] + n_eval + c.data.n_prompts)]}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = VARIANTS.parse(arg, "proxy,cpu")
    role = "gold" if "gold" in variants else "proxy"
    smoke = "smoke" in variants
    c = instructgpt.get_config("smollm2_hh,cpu")
    c.name = f"real_model_{role}"
    c.variant = arg or "proxy,cpu"
    seed = VARIANTS.number(variants, "seed")
    if seed is not None:
        c.seed = int(seed)
    n = SMOKE_PAIRS if smoke else {k: None for k in LAYOUT}
    if smoke:
        c.model.preset, c.model.path, c.model.tokenizer = "test", "", "corpus:gpt2"
        c.model.overrides = ml_collections.ConfigDict({
            "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "d_ff": 64,
            "max_seq_len": 128})
        c.data.max_len, c.data.max_prompt_len = 64, 48
        c.data.n_sft, c.data.n_prompts = 16, 16
        c.data.val_fraction = 0.004  # 19 held-out Alpaca demonstrations for PPO's alignment tax (not 499)
        c.sampling.max_new_tokens = 6
        c.log.wandb = "disabled"
    n_eval = 8 if smoke else 64
    chat = "chat" in variants
    # the same rows in either form (corpora.hh_rlhf): the layout holds for both
    source = SOURCE + "?form=chat" if chat else SOURCE
    if chat and not smoke:
        # room for a chat model to answer and stop (as a raw transcript no start response ended within 32 tokens:
        # experiments/README.md); longer answers cost decoding time in every stage
        c.sampling.max_new_tokens = 64
    if chat and smoke:  # the GPT-2 tokenizer has no chat template of its own
        c.data.template = "chatml"
    c.sampling.sampler = "inverse_cdf"  # the same distribution; a Gumbel draw over ~50k tokens is most of a CPU step
    # the parts (module docstring): held-out pairs and prompts, the proxy's or the gold's training pairs
    c.data.rm_val = part("heldout", n["heldout"], source)
    c.data.rm_train = part(role, n[role], source)
    c.data.n_rankings = (n[role] or LAYOUT[role][1] - LAYOUT[role][0])
    held, proxy = LAYOUT["heldout"][1], LAYOUT["proxy"]  # held-out prompts end where the proxy rows begin
    c.data.prompts = f"{source}[{held - n_eval}:{proxy[0] + (n['proxy'] or proxy[1] - proxy[0])}]"
    c.heldout.update(n_prompts=n_eval, temperature=1.0, n_report_samples=4)
    # the start: stage sft leaves the base model as it is (one LoRA step at the warmup's learning rate 0)
    batch = 8  # pairs (or prompts) per step
    c.sft.update(steps=1, warmup_steps=1, batch_size=batch, lora_rank=8, save_every=0)
    c.rm.update(init="base", epochs=2 if role == "gold" else 1, batch_size=batch, save_every=0 if smoke else 25)
    if smoke:
        c.rm.update(steps=3 if role == "proxy" else 4, lr=1e-3)
    c.dpo.update(lora_rank=8, lora_alpha=16.0, batch_size=batch, epochs=1, lr=5e-5, warmup_steps=5,
                 save_every=0 if smoke else 25)
    # PPO's LoRA learning rate: the adapters start at zero and get 25 Adam steps; at 2e-5 the seed-0 policy's
    # rollouts stayed at 0.005 +- 0.012 nats of KL from the start over iterations 6-15 (stopped there); at 2e-4
    # (the rate LoRA SFT uses in configs/instructgpt.py) the held-out KL reached 0.31 [0.17, 0.45] nats: chosen
    # by how far the policy moves in the budget, not by either reward (experiments/README.md)
    c.ppo.update(lora_rank=8, lora_alpha=16.0, iterations=4 if smoke else 25, batch_size=batch, minibatches=1,
                 epochs=1, lr=2e-4, temperature=1.0, save_every=2 if smoke else 5)
    # responses are cut at sampling.max_new_tokens (32): most of a chat model's would lose the missing-EOS
    # penalty's -10, and PPO would learn to stop rather than what the proxy RM prefers; keep the RM score
    c.ppo.missing_eos_penalty = None
    c.bon.update(n_samples=8 if smoke else 64, n_prompts=n_eval if smoke else 32, temperature=1.0)
    if smoke:  # learning rates that move a random-init model within a few steps
        c.dpo.update(steps=3, lr=1e-3)
        c.ppo.update(lr=1e-3)
    c.evaluate.update(n_prompts=n_eval, n_pairs=n["heldout"] or 200, max_new_tokens=c.sampling.max_new_tokens,
                      temperature=1.0, batch_size=8 if smoke else 16, n_truthfulqa=8 if smoke else 200,
                      bootstrap=200 if smoke else 2000, n_report=4)
    if smoke:  # the GPT-2 tokenizer has no chat template
        c.evaluate.truthfulqa_formats = "qa_primer"
    return c
