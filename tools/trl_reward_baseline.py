"""TRL's RewardTrainer on exactly the pairs, truncation and budget our `rm` stage uses, then the
same held-out measures our evaluation reports (pair accuracy with its interval, the shorter-wins
rule, the correlation of the score difference with the length difference).

    pip install trl==0.29.0      # not a project dependency
    RLHF_JAX_DATA_DIR=../shared/data python tools/trl_reward_baseline.py \
        --config configs/instructgpt.py:smollm2_hh,cpu --out trl_rm.json

The pairs are tokenised by our code (prompt + response + EOS, the prompt cut from the left as
our truncation does), because TRL drops over-long pairs instead of truncating them; TRL
receives the token ids. TRL computes what our stage computes (`--trl-settings matched`, the
default: float32, no activation checkpointing); its configs otherwise turn on bfloat16 autocast
and activation checkpointing on every device, CPU included. The model is the config's
checkpoint (GGUF or HF), written as an HF directory and loaded as AutoModelForSequenceClassification with a fresh score head.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402,F401  (config files import it)

from rlhf_jax.context import base_model  # noqa: E402
from rlhf_jax.data.run_data import RunData  # noqa: E402
from rlhf_jax.eval import stats  # noqa: E402
from rlhf_jax.models import save_pretrained  # noqa: E402
# load_config: time_bon, time_heldout, time_truthfulqa and pair_positions import it from here
from tools._common import host, load_config, parser, report, trl_baseline_args, trl_settings  # noqa: E402
from tools.benchmark_pipeline import StepClock  # noqa: E402


def schedule_args(r) -> dict:
    """TrainingArguments giving HF's scheduler the learning rates our `rm` block's schedule gives
    (rlhf_jax.train.optim.schedule: linear warm-up from 0, then cosine decay to lr * min_lr_ratio, or
    constant): HF's plain "cosine" decays to 0, so a min_lr_ratio above 0 needs "cosine_with_min_lr"."""
    if r.schedule == "constant":
        return {"lr_scheduler_type": "constant_with_warmup"}
    if r.schedule != "cosine":
        raise SystemExit(f"error: rm.schedule {r.schedule!r} has no HF counterpart here; valid: cosine, constant")
    if r.min_lr_ratio > 0:
        return {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": float(r.min_lr_ratio)}}
    return {"lr_scheduler_type": "cosine"}


def pairs(arrays) -> tuple[list[list[int]], list[list[int]]]:
    """(chosen ids, rejected ids) from ranking arrays of pairs (rank 0 is chosen)."""
    chosen, rejected = [], []
    for tokens, mask, ranks in zip(arrays["tokens"], arrays["mask"], arrays["ranks"]):
        rows = [t[:int(m.sum())].tolist() for t, m in zip(tokens, mask)]
        best = int(np.argmin(np.where(ranks >= 0, ranks, 99)))
        chosen.append(rows[best])
        rejected.append(rows[1 - best])
    return chosen, rejected


def main() -> None:
    p = parser(__doc__, out=True)
    trl_baseline_args(p, "rm")
    args = p.parse_args()
    settings = trl_settings(args.trl_settings)
    os.chdir(Path(__file__).resolve().parents[1])
    sys.path.insert(0, os.getcwd())
    c = load_config(args.config)
    import datasets
    import torch
    import transformers
    import trl

    torch.manual_seed(c.seed)
    model, tok = base_model(c, None)
    data = RunData(c, tok, None)
    train_c, train_r = pairs(data.arrays("rm_train"))
    val_c, val_r = pairs(data.arrays("rm_val"))
    hf_dir = Path(tempfile.mkdtemp(prefix="trl_rm_"))
    save_pretrained(model, hf_dir, tok)
    pad = tok.pad_token_id
    if pad == tok.eos_token_id:  # HF's classifier reads the last non-pad token: keep the EOS readable
        pad = tok.convert_tokens_to_ids(tok.unk_token) if tok.unk_token else 0
    seqcls = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir, num_labels=1,
                                                                            dtype=torch.float32)
    seqcls.config.pad_token_id = pad
    r = c.rm
    steps = args.steps or r.steps or r.epochs * (len(train_c) // r.batch_size)
    config = trl.RewardConfig(
        output_dir=tempfile.mkdtemp(), report_to=[], save_strategy="no", logging_steps=10, seed=c.seed,
        use_cpu=not torch.cuda.is_available(), per_device_train_batch_size=r.batch_size, max_steps=steps,
        learning_rate=r.lr, **schedule_args(r), warmup_steps=r.warmup_steps, weight_decay=r.weight_decay,
        adam_beta1=r.b1, adam_beta2=r.b2, adam_epsilon=r.eps, max_grad_norm=r.max_grad_norm,
        max_length=c.data.max_len, dataloader_num_workers=0, center_rewards_coefficient=r.center_coef or None,
        **settings)
    train = datasets.Dataset.from_dict({"chosen_ids": train_c, "rejected_ids": train_r})
    tok.pad_token_id = pad
    clock = StepClock()  # the gaps between optimizer steps (the median, after two warm-up steps)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        trl.RewardTrainer(model=seqcls, processing_class=tok, train_dataset=train, args=config,
                          callbacks=[clock]).train()
    seconds = time.perf_counter() - t0
    seqcls.eval()

    def score(rows):
        out = []
        for i in range(0, len(rows), 16):
            batch = rows[i:i + 16]
            width = max(map(len, batch))
            ids = torch.tensor([b + [pad] * (width - len(b)) for b in batch])
            attn = torch.tensor([[1] * len(b) + [0] * (width - len(b)) for b in batch])
            with torch.no_grad():
                out.append(seqcls(input_ids=ids, attention_mask=attn).logits[:, 0].numpy())
        return np.concatenate(out)

    sc, sr = score(val_c), score(val_r)
    words = lambda text: len(text.split())  # the evaluation's length: whitespace words of the response
    d_len = np.array([words(r["chosen"]) - words(r["rejected"]) for r in data.records("rm_val")], np.float64)
    scheduler = {"type": str(config.lr_scheduler_type.value), **(config.lr_scheduler_kwargs or {})}
    result = {"trl": trl.__version__, "lr_scheduler": scheduler, "transformers": transformers.__version__,
              "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(), "host": host(), "settings": args.trl_settings,
              "bf16": bool(config.bf16), "gradient_checkpointing": bool(config.gradient_checkpointing), "steps": steps, "batch_size": r.batch_size, "lr": r.lr, "max_len": c.data.max_len,
              "train_pairs": len(train_c), "heldout_pairs": len(val_c), "train_seconds": seconds,
              "step_seconds_median": clock.step_s(),
              "accuracy": stats.accuracy((sc > sr) + 0.5 * (sc == sr)).to_dict(),
              "shorter_wins_accuracy": stats.accuracy((d_len < 0) + 0.5 * (d_len == 0)).to_dict(),
              "score_length_correlation": float(np.corrcoef(sc - sr, d_len)[0, 1])}
    report(result, args.out, indent=1)


if __name__ == "__main__":
    main()
