"""TRL's SFTTrainer on exactly the demonstrations, truncation, adapters and budget our `sft` stage
uses, then the held-out token NLL our stage reports, so the two fine-tunings compare in quality
and in time.

    pip install trl==0.29.0 peft==0.21.0      # not project dependencies
    RLHF_JAX_DATA_DIR=../shared/data python tools/trl_sft_baseline.py \
        --config configs/instructgpt.py:smollm2_hh,cpu --out trl_sft.json

Our side is the stage itself: `python -m rlhf_jax.main --config configs/instructgpt.py:smollm2_hh,cpu
--config.stages=sft --workdir W` (its summary: val_loss, median_step_seconds, train_seconds).

The rows are tokenised by our code (prompt + completion + EOS, cut as our truncation cuts them) and
TRL receives the token ids with the completion mask, so both sides train on the same tokens with
the completion-only loss. With `sft.lora_rank` > 0, peft's LoRA gets our rank, alpha (the same
alpha / rank scale) and target projections, no dropout; otherwise every weight trains. The
optimizer is ours on both sides: AdamW with the block's betas, eps, weight decay, clipping and
schedule (linear warm-up, cosine to lr * min_lr_ratio). TRL pads each batch to its longest row;
ours pads to data.max_len unless `sft.cut_bucket` cuts it. Before training, both models score the
held-out rows (`start_val_loss`): they are the same checkpoint, so the two numbers must agree,
which checks the rows, the mask and the metric before any timing is read.
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
from rlhf_jax.models import save_pretrained  # noqa: E402
from tools._common import host, load_config, parser, report, trl_baseline_args, trl_settings  # noqa: E402
from tools.benchmark_pipeline import StepClock  # noqa: E402
from tools.trl_reward_baseline import schedule_args  # noqa: E402

# our LoRA target names -> the transformers Llama module names peft matches
HF_TARGETS = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj", "w_gate": "gate_proj",
              "w_up": "up_proj", "w_down": "down_proj"}


def rows(arrays) -> tuple[list[list[int]], list[list[int]]]:
    """(input ids, completion mask) per row of SFT arrays, without the right padding."""
    ids, masks = [], []
    for tokens, seg, mask in zip(arrays["tokens"], arrays["segment_ids"], arrays["loss_mask"]):
        n = int((seg != 0).sum())
        if (seg[:n] != seg[0]).any() or (seg[n:] != 0).any():
            raise SystemExit("error: packed SFT rows (sft.pack) have no TRL counterpart here; set sft.pack=False")
        ids.append(tokens[:n].tolist())
        masks.append(mask[:n].tolist())
    return ids, masks


def peft_targets(spec: str) -> list[str]:
    names = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in names if t not in HF_TARGETS]
    if unknown:
        raise SystemExit(f"error: sft.lora_targets {', '.join(unknown)} have no transformers module here; "
                         f"valid: {', '.join(HF_TARGETS)}")
    return [HF_TARGETS[t] for t in names]


def torch_val_loss(model, ids, masks, pad: int, batch_size: int) -> float:
    """Token-weighted NLL of the completion tokens (ours: rlhf_jax.train.sft.validation_loss)."""
    import torch
    import torch.nn.functional as F
    nll, count = 0.0, 0.0
    order = np.argsort([len(r) for r in ids])  # rows of similar length together, as ours batches them
    model.eval()
    for i in range(0, len(order), batch_size):
        batch = [ids[j] for j in order[i:i + batch_size]]
        mask = [masks[j] for j in order[i:i + batch_size]]
        width = max(map(len, batch))
        x = torch.tensor([r + [pad] * (width - len(r)) for r in batch])
        attn = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch])
        m = torch.tensor([r + [0] * (width - len(r)) for r in mask], dtype=torch.float64)[:, 1:]
        with torch.no_grad():
            logits = model(input_ids=x, attention_mask=attn).logits[:, :-1].float()
        logp = -F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                reduction="none").reshape(m.shape)
        nll -= float((logp.double() * m).sum())
        count += float(m.sum())
    model.train()
    return nll / max(count, 1.0)


def main() -> None:
    p = parser(__doc__, out=True)
    trl_baseline_args(p, "sft")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config field changed (e.g. sft.lora_rank=0), as on our side's command line")
    args = p.parse_args()
    settings = trl_settings(args.trl_settings)
    os.chdir(Path(__file__).resolve().parents[1])
    c = load_config(args.config, args.set)
    s = c.sft
    if s.freeze_layers or s.grad_accum > 1 or s.dropout:
        raise SystemExit("error: sft.freeze_layers, sft.grad_accum and sft.dropout have no counterpart in this "
                         "baseline; set them to 0 / 1 / 0")
    import datasets
    import torch
    import transformers
    import trl

    from rlhf_jax.train import sft as sft_lib

    torch.manual_seed(c.seed)
    model, tok = base_model(c, None)
    data = RunData(c, tok, None)
    train_arrays, val_arrays = data.arrays("sft_train", pack=False), data.arrays("sft_val", pack=False)
    train_ids, train_masks = rows(train_arrays)
    val_ids, val_masks = rows(val_arrays)
    val_bs = min(s.batch_size, len(val_ids))
    ours_start = sft_lib.validation_loss(sft_lib.make_sft_eval(model.graphdef), model.params, val_arrays,
                                         val_bs)["val_loss"]
    hf_dir = Path(tempfile.mkdtemp(prefix="trl_sft_"))
    save_pretrained(model, hf_dir, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    lm = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    start = torch_val_loss(lm, val_ids, val_masks, pad, val_bs)
    peft_config = None
    if s.lora_rank:
        import peft
        peft_config = peft.LoraConfig(r=int(s.lora_rank), lora_alpha=float(s.lora_alpha), lora_dropout=0.0,
                                      target_modules=peft_targets(s.lora_targets), bias="none",
                                      task_type="CAUSAL_LM")
    steps = args.steps or s.steps or s.epochs * (len(train_ids) // s.batch_size)
    config = trl.SFTConfig(
        output_dir=tempfile.mkdtemp(), report_to=[], save_strategy="no", logging_steps=10, seed=c.seed,
        use_cpu=not torch.cuda.is_available(), per_device_train_batch_size=s.batch_size, max_steps=steps,
        learning_rate=s.lr, **schedule_args(s), warmup_steps=s.warmup_steps, weight_decay=s.weight_decay,
        adam_beta1=s.b1, adam_beta2=s.b2, adam_epsilon=s.eps, max_grad_norm=s.max_grad_norm or 0.0,
        max_length=c.data.max_len, completion_only_loss=True, packing=False, padding_free=False,
        dataloader_num_workers=0, **settings)
    train = datasets.Dataset.from_dict({"input_ids": train_ids, "completion_mask": train_masks})
    if tok.pad_token_id is None:
        tok.pad_token_id = pad
    clock = StepClock()  # the gaps between optimizer steps (the median, after two warm-up steps)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        trainer = trl.SFTTrainer(model=lm, processing_class=tok, train_dataset=train, args=config,
                                 peft_config=peft_config, callbacks=[clock])
        trainer.train()
    seconds = time.perf_counter() - t0
    trained = trainer.model
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    result = {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
              "peft": (__import__("peft").__version__ if s.lora_rank else None),
              "torch_threads": torch.get_num_threads(), "host": host(), "settings": args.trl_settings,
              "bf16": bool(config.bf16), "gradient_checkpointing": bool(config.gradient_checkpointing),
              "lr_scheduler": {"type": str(config.lr_scheduler_type.value), **(config.lr_scheduler_kwargs or {})},
              "steps": steps, "batch_size": s.batch_size, "lr": s.lr, "max_len": c.data.max_len,
              "lora_rank": int(s.lora_rank), "trainable_params": int(trainable),
              "train_rows": len(train_ids), "heldout_rows": len(val_ids),
              "train_tokens_mean": float(np.mean([len(r) for r in train_ids])),
              "start_val_loss": start, "start_val_loss_ours": ours_start,
              "train_seconds": seconds, "step_seconds_median": clock.step_s(),
              "val_loss": torch_val_loss(trained, val_ids, val_masks, pad, val_bs)}
    report(result, args.out, indent=1)


if __name__ == "__main__":
    main()
