"""Fine-grained rewards (Wu et al. 2023) against one holistic reward, under the same PPO budget.

    python -m rlhf_jax.main --config configs/ablations/fine_grained.py:holistic,hackable --workdir runs/fg_holistic
    python -m rlhf_jax.main --config configs/ablations/fine_grained.py:fine_grained,hackable --workdir runs/fg_fine
    python -m rlhf_jax.main --config configs/ablations/fine_grained.py:qa_feedback --workdir runs/fg_qa

holistic: SFT, one preference RM, PPO with its score on the EOS (the standard pipeline).
fine_grained: SFT, the same preference RM, two per-word classifiers trained on span
  annotations of the task world ("wrong": a digit that is not the reference item at its
  position; "extra": filler or digits past the reference length), then PPO on
      r_t = sum_k w_k * (+-1 at each word end of model k) + RM score at the EOS - beta * KL_t.
  The classifiers see per-word errors; completeness (missing items) is left to the holistic
  RM, as Wu et al. leave it to their whole-response preference RM.
qa_feedback: the QA-Feedback category models on real span annotations (needs
  RLHF_JAX_DATA_DIR): relevance (Irrelevant / Redundant / Incoherent) per sub-sentence and
  factuality (Wrong-Grounding / Unverifiable) per sentence, with the paper's weights 0.3 and
  0.5, on a small decoder with the GPT-2 tokenizer; stage fgrm only (held-out segment accuracy).
hackable: preference rankings of perturbed answers (the RM that PPO over-optimises).
Any variant of configs/instructgpt.py passes through (micro for tests).
"""
from configs import instructgpt
from configs.variants import Variants

WORLD = "wrong:word:0.3,extra:word:0.3"
QA = ("relevance:subsentence:0.3:Irrelevant|Redundant|Incoherent,"
      "factuality:sentence:0.5:Wrong-Grounding|Unverifiable")


VARIANTS = instructgpt.VARIANTS | Variants("configs/ablations/fine_grained.py", {
    "fine_grained": "per-word category models + the holistic RM", "holistic": "one holistic RM",
    "qa_feedback": "QA-Feedback category models on real spans", "hackable": "RMs on perturbed answers"})


def get_config(arg: str | None = None):
    variants = VARIANTS.parse(arg, "fine_grained")
    c = instructgpt.get_config(instructgpt.base_variants(variants))
    c.name, c.variant = "fine_grained", arg or "fine_grained"
    if "holistic" in variants:
        c.stages = "sft,rm,ppo"
    else:
        c.stages = "sft,rm,fgrm,ppo"
        c.fgrm.components = WORLD
    if "hackable" in variants:
        c.data.rm_from_policy = False
    if "micro" in variants:
        c.fgrm.update(n_train=128, n_val=32, epochs=1, batch_size=16, save_every=0)
    if "qa_feedback" in variants:
        c.stages = "fgrm"
        c.fgrm.update(components=QA, init="base", data="corpus:qa_feedback", n_train=1000, epochs=4, batch_size=16,
                    lr=1e-3)
        c.model.tokenizer = "corpus:gpt2"
        c.model.overrides.update(max_seq_len=768)
        c.data.update(max_len=768, max_prompt_len=512, val_fraction=0.1)
    return c
