"""Stage "clf": the gold classifier of the DPO paper's IMDb experiment, a scalar-head decoder of
its own size (`clf.overrides`, random init from `clf.seed`) trained with binary cross-entropy
on labelled reviews (`clf.train`), each cut to a random length in [clf.min_len, clf.max_len]
tokens. Its held-out accuracy on `clf.test` goes in the summary with a 95% bootstrap interval,
on the same random cuts and at fixed lengths. With `data.gold = "clf"` it is every stage's gold
reward (`stages.gold.gold_reward`: p(positive) at the last text token, `clf.output`), and PPO can
optimise it directly (`ppo.reward = "gold"`).

Everything the stage draws (initialisation, data order, cut lengths) comes from `clf.seed`, not
the run's seed, so every seed of a sweep is judged by the same gold classifier, as the paper's
runs are by one pretrained classifier.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from rlhf_jax import checkpoint
from rlhf_jax.data.batches import BatchIterator
from rlhf_jax.data.run_data import read_source
from rlhf_jax.eval import stats
from rlhf_jax.rewards.classifier import OUTPUTS
from rlhf_jax.stages.base import Training, train, train_state
from rlhf_jax.stages.gold import classifier_model
from rlhf_jax.stages.registry import listed, register_stage
from rlhf_jax.train import classifier as clf_lib
from rlhf_jax.train import optim

SALT = 9
FIXED_LENGTHS = (16, 32)  # held-out accuracy on each test review's first L tokens (and at clf.max_len)


def check(c, need) -> None:
    f = c.clf
    wanted = "clf" in listed(c) or c.data.gold == "clf"
    need(c.data.gold in ("", "clf") or (c.data.gold.startswith("rm:") and len(c.data.gold) > 3), "data.gold",
         "must be '' (the task world's gold reward, none from files), 'clf' (the classifier of stage clf) or "
         "'rm:WORKDIR' (the reward model of another run's workdir)")
    need(f.output in OUTPUTS, "clf.output", f"must be one of {OUTPUTS}")
    need(not wanted or f.train.startswith("corpus:"), "clf.train",
         "must name a reader of labelled text (corpus:NAME, e.g. corpus:imdb_reviews)")
    need(not wanted or f.test.startswith("corpus:"), "clf.test", "must name a reader of labelled text (corpus:NAME)")
    need(1 <= f.min_len <= f.max_len, "clf.min_len", f"must be in [1, clf.max_len={f.max_len}]")
    max_seq = f.overrides.get("max_seq_len", c.model.overrides.get("max_seq_len", 0))
    judged = c.data.max_prompt_len + c.sampling.max_new_tokens
    need(not wanted or not max_seq or max_seq >= max(f.max_len, judged), "clf.overrides.max_seq_len",
         f"{max_seq} is shorter than clf.max_len={f.max_len} or the judged prompt + response ({judged})")
    need(f.n_test >= 0 and f.n_train >= 0, "clf.n_train", "n_train and n_test must be >= 0 (0 = all)")


def labelled(ctx, spec: str, n: int) -> list[dict]:
    """{"text", "label"} records of a reader (the first n; 0 = all)."""
    records = read_source(spec, "text", ctx.config.data.policy)
    return records[:n] if n else records


def held_out(graphdef, params, records: list[dict], tokenizer, f) -> dict[str, Any]:
    """Test accuracy (with its interval) on random cuts like the training texts, and on each
    review's first L tokens for L in FIXED_LENGTHS and clf.max_len."""
    out = {"n_test": len(records), "test_positive_rate": float(np.mean([r["label"] for r in records]))}
    cuts = {"": (f.min_len, f.max_len)} | {f"_at_{n}": (n, n) for n in (*FIXED_LENGTHS, f.max_len) if n <= f.max_len}
    for suffix, (lo, hi) in cuts.items():
        arrays = clf_lib.labelled_arrays(records, tokenizer, lo, hi, seed=f.seed * 1000 + SALT + 1)
        logits = clf_lib.predictions(graphdef, params, arrays, f.batch_size)
        correct = ((logits > 0) == (arrays["label"] > 0.5)).astype(np.float64)
        out[f"test_accuracy{suffix}"] = float(correct.mean())
        out.setdefault("intervals", {})[f"test_accuracy{suffix}"] = stats.accuracy(correct, seed=0).to_dict()
        if not suffix:
            out["test_logit_std"] = float(logits.std())
    return out


@register_stage("clf", trains=True, check=check)
def run(ctx) -> dict[str, Any]:
    f = ctx.config.clf
    t0 = time.perf_counter()
    train_r, test_r = labelled(ctx, f.train, f.n_train), labelled(ctx, f.test, f.n_test)
    arrays = clf_lib.labelled_arrays(train_r, ctx.tokenizer, f.min_len, f.max_len, seed=f.seed * 1000 + SALT)
    model = classifier_model(ctx)
    it = BatchIterator(arrays, f.batch_size, seed=f.seed * 1000 + SALT)
    total = f.steps or f.epochs * it.steps_per_epoch
    tx, sched = optim.from_config(f, total)
    result = train(ctx, "clf", Training(clf_lib.make_classifier_step(model.graphdef, tx, sched),
                                        train_state(model.params, tx), {"train": it}, total,
                                        progress_keys=("loss", "accuracy")), SALT)
    params = result.state.params
    summary = {"steps": total, "n_train": len(train_r), "train_accuracy": result.last_metrics.get("accuracy"),
               "params": int(sum(np.size(x) for x in jax.tree.leaves(params))), "output": f.output,
               **held_out(model.graphdef, params, test_r, ctx.tokenizer, f), "wall_seconds": time.perf_counter() - t0}
    checkpoint.save_final(ctx.workdir, "clf", params, summary)
    return summary
