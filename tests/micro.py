"""What several test files build the same way: the task world's tiny model shapes, the micro
pipeline config with overrides, and a summary's numbers without wall times."""
from configs.instructgpt import get_config
from rlhf_jax.data import synthetic
from rlhf_jax.data.tokenize import TokenizeConfig
from rlhf_jax.models import PRESETS
from rlhf_jax.sweep.results import is_wall_clock

TOK = synthetic.tokenizer()
WORLD = synthetic.WorldConfig(seed=0, max_items=4)
TCFG = TokenizeConfig(max_len=16, max_prompt_len=8)
CFG = PRESETS["test"].replace(vocab_size=len(TOK), d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
                              eos_token_id=TOK.eos_token_id, pad_token_id=TOK.pad_token_id)


def micro(**overrides):
    """configs/instructgpt.py:micro with dotted overrides ("ppo.iterations": 3)."""
    c = get_config("micro")
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


def numbers(summary: dict) -> dict:
    """A run summary's fields without its timings (what two equal runs share)."""
    return {stage: {k: v for k, v in vals.items() if not is_wall_clock(k)} for stage, vals in summary.items()}
