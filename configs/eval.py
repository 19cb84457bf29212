"""Evaluation suites: `python -m rlhf_jax.evaluate --config configs/eval.py:SUITE --workdir DIR`.

    python -m rlhf_jax.evaluate --config configs/eval.py:tiny --workdir runs/tiny     # the offline default's SFT and PPO
    python -m rlhf_jax.evaluate --config configs/eval.py:smollm2 --workdir runs/eval_smollm2

When DIR already holds a run (its config.json), the evaluation keeps that run's config and
takes only the `evaluate` section (and `stages=eval`) from the suite, so the run's
checkpoints, tokenizer and data are evaluated as they were trained.

Suites:
  tiny      the task world: SFT vs PPO sampled (temperature 1) on the held-out prompts, judged by the
            gold reward and the trained RM (paired win rates with intervals, the judges' bias),
            held-out perplexity, the judges' agreement with the simulated annotators, the RM's
            pair accuracy and how much length explains it.
  micro     tiny at test size.
  smollm2   SmolLM2-135M-Instruct as it ships (the GGUF of tools/fetch_smollm2.py): TruthfulQA
            MC1 / MC2 (QA primer and chat template), AlpacaEval (greedy) win rate against the davinci-003
            references judged by the model itself (LLM-as-a-judge, both orders) with its position
            and verbosity bias, and its agreement with the HH-RLHF human labels. Add `small` for a
            CPU-sized subset.
"""
from configs import instructgpt
from configs.variants import Variants
from rlhf_jax import paths

VARIANTS = Variants("configs/eval.py", {
    "tiny": "the task world's SFT and PPO policies", "micro": "tiny at test size",
    "smollm2": "SmolLM2-135M-Instruct as it ships", "small": "a CPU-sized subset of smollm2"})


def get_config(arg: str | None = None):
    variants = VARIANTS.parse(arg, "tiny")
    c = instructgpt.get_config("micro" if "micro" in variants else None)
    c.name, c.variant, c.stages = "eval", arg or "tiny", "eval"
    if "micro" in variants:
        c.evaluate.update(n_prompts=32, n_pairs=64, bootstrap=500, n_report=4)
    if "smollm2" in variants:
        gguf = paths.smollm2_spec()  # tools/fetch_smollm2.py puts it there (RLHF_JAX_SMOLLM2 moves it)
        c.model.update(preset="", path=gguf, tokenizer="")
        c.model.overrides = {}
        c.data.update(source="files", policy="skip", max_len=512, max_prompt_len=384)
        c.evaluate.update(suites="truthfulqa,alpaca_eval,judge_agreement", policies=f"smollm2={gguf}",
                          baseline="smollm2", judges="llm,llm_rating", judge_model="policy:smollm2",
                          pairs="corpus:hh_rlhf", max_new_tokens=128, temperature=0.0, batch_size=16, n_pairs=500,
                          chat_prompts=True)
    if "small" in variants:
        c.data.update(max_len=256, max_prompt_len=192)
        c.evaluate.update(n_truthfulqa=100, n_alpaca=100, n_pairs=200, max_new_tokens=64)
    return c
