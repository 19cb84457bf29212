"""tools/probe_sft_widths.py on the micro config with rows padded to 48 columns: the widths it
counts are the batches' own, and it times the stage's step at both widths."""
import importlib.util
from pathlib import Path

import numpy as np

from rlhf_jax.context import build_context
from rlhf_jax.data.batches import cut_width
from rlhf_jax.models.forward import row_ends
from rlhf_jax.stages.sft import SALT
from tests.micro import micro

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("probe_sft_widths", ROOT / "tools" / "probe_sft_widths.py")
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


def test_widths_and_timed_steps(tmp_path):
    c = micro(**{"data.max_len": 48})
    ctx = build_context(c, tmp_path, use_wandb=False)
    batches, out = probe.widths(ctx, c, [8, 16])
    arrays = ctx.data.arrays("sft_train")
    it = ctx.iterator(arrays, c.sft.batch_size, SALT)
    first = next(it)
    np.testing.assert_array_equal(batches[0]["tokens"], first["tokens"])  # the stage's order
    ends = [row_ends(b["segment_ids"], b["loss_mask"]) for b in batches]
    assert out["batches"] == len(batches) == it.steps_per_epoch and out["max_len"] == 48
    assert out["bucket_8"]["mean_width"] == np.mean([cut_width(e, 48, 8) for e in ends])
    assert out["longest_row_share"] <= out["bucket_8"]["share_of_max_len"] <= out["bucket_16"]["share_of_max_len"] < 1
    assert 0 < out["real_tokens_share"] < out["longest_row_share"]
    rows, compiles = probe.time_steps(ctx, c, batches[:1], 8, 1)
    assert rows[0]["width"] == cut_width(ends[0], 48, 8) < 48
    assert rows[0]["max_len_s"] > 0 and rows[0]["cut_s"] > 0 and set(compiles) == {"48", str(rows[0]["width"])}


def test_sets_override_the_config():
    c = probe.load_config(f"{ROOT / 'configs' / 'instructgpt.py'}:micro",
                          ["sft.batch_size=8", "data.max_len=48", "name=x"])
    assert (c.sft.batch_size, c.data.max_len, c.name) == (8, 48, "x")
