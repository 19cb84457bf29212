"""Stage kto end to end on the task world (configs/dpo.py:micro,kto, shrunk): its summary ends like
dpo's, and a file of binary feedback (kto.data) trains it in place of the converted rankings."""
import json

import numpy as np
import pytest

from configs.dpo import get_config
from rlhf_jax.data import synthetic
from rlhf_jax.errors import ConfigError
from rlhf_jax.stages import run as run_pipeline
from rlhf_jax.stages.validate import validate_config
from tests import tolerance as tol


def config(**kto):
    c = get_config("micro,kto")
    c.sft.steps, c.data.n_rankings, c.data.n_rankings_val, c.heldout.n_prompts = 2, 16, 8, 8
    c.kto.update(steps=2, batch_size=16, **kto)
    return c


def test_kto_runs_from_the_cli_config_and_ends_like_dpo(tmp_path):
    c = get_config("micro,kto")
    assert c.stages == "sft,kto" and (c.kto.beta, c.kto.lambda_d, c.kto.lambda_u) == (0.1, 1.0, 1.0)
    c = config()
    summary = run_pipeline(c, tmp_path, use_wandb=False)
    k = summary["kto"]
    assert k["steps"] == 2 and min(k["n_desirable"], k["n_undesirable"]) >= 16  # 16 rankings, ties at an end add more
    for key in ("val_loss", "val_kl", "val_z0", "val_reward_desirable", "val_reward_undesirable", "kl_final",
                "gold_reward_sft", "gold_reward_final", "win_rate_vs_sft"):
        assert np.isfinite(k[key]), key
    assert k["val_z0"] == max(0.0, k["val_kl"])
    for name in ("final", "metrics.jsonl", "samples.json"):
        assert (tmp_path / "kto" / name).exists(), name
    first = json.loads((tmp_path / "kto" / "metrics.jsonl").read_text().splitlines()[0])
    # step 1 starts at the reference: every ratio 0 up to rounding (the cached reference is another
    # program: two forward chains on log-prob sums of at most max_len tokens, each above -10 per
    # token here), so z0 is about 0 and the loss lambda - lambda * sigmoid(0) = 0.5
    m = c.model.overrides
    chain = (tol.decoder_chain(m.d_model, m.d_ff, m.n_layers, m.head_dim, c.data.max_len)
             + len(synthetic.tokenizer()) + c.data.max_len)
    rounding = tol.f32(chain, 10.0 * c.data.max_len)
    assert abs(first["kl"]) <= rounding and first["z0"] == max(0.0, first["kl"])
    assert first["loss"] == pytest.approx(0.5, abs=c.kto.beta * rounding)

    # a file of binary feedback in place of the converted rankings (the SFT stage is finished)
    prompts = [f"sort {i % 8} {i % 8 + 2} {i % 8 + 1} =>" for i in range(20)]
    rows = ([{"prompt": p, "response": " ".join(sorted(p.split()[1:4])), "label": True} for p in prompts]
            + [{"prompt": p, "response": "9", "label": "undesirable"} for p in prompts])
    path = tmp_path / "feedback.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    c = config(data=str(path), lambda_u=1.2)
    c.stages = "kto"
    work = tmp_path / "from_file"
    (work / "sft").mkdir(parents=True)
    for name in ("final", "summary.json"):
        src = tmp_path / "sft" / name
        (work / "sft" / name).symlink_to(src, target_is_directory=src.is_dir())
    k = run_pipeline(c, work, use_wandb=False)["kto"]
    # val_fraction 0.05 of 40 rows -> the first 2 held out (both desirable)
    assert (k["n_desirable"], k["n_undesirable"]) == (18, 20)
    assert k["lambda_ratio"] == pytest.approx(18 / (1.2 * 20))  # outside [1, 4/3]: the stage says so


def test_kto_config_errors_name_the_field():
    for field, value, words in (("kto.beta", 0.0, "config.kto.beta: must be > 0"),
                                ("kto.unpair", "pairs", "config.kto.unpair: must be one of ('both', 'one')"),
                                ("kto.lambda_u", -1.0, "config.kto.lambda_u: must be > 0")):
        c = get_config("micro,kto")
        c.kto[field.split(".")[1]] = value
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
            validate_config(c)
