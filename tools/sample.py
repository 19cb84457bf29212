"""Sample from a checkpoint: a HF directory or a GGUF file (default: the fetched SmolLM2-135M-Instruct).

    python tools/sample.py --prompt "What is the capital of France?" --prompt "Name a prime."
    python tools/sample.py --model path/to/hf_dir --temperature 0.7 --top-p 0.9 --max-new-tokens 64

Prompts are rendered with the tokenizer's chat template when it has one. Prints JSON lines.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rlhf_jax.generate import SamplingConfig, generate, left_pad  # noqa: E402
from rlhf_jax.models import load_pretrained  # noqa: E402
from rlhf_jax.paths import smollm2_path  # noqa: E402
from tools._common import parser  # noqa: E402


def encode(tokenizer, text: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    return tokenizer.encode(text)


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--model", type=Path, default=smollm2_path())
    ap.add_argument("--prompt", action="append", help="repeatable")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not args.model.exists():
        print(f"{args.model} does not exist: run `python tools/fetch_smollm2.py` or pass --model", file=sys.stderr)
        return 2
    prompts = args.prompt or ["What is the capital of France?"]
    t0 = time.perf_counter()
    model, tokenizer = load_pretrained(args.model)
    load_s = time.perf_counter() - t0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens, mask = left_pad([encode(tokenizer, p) for p in prompts], pad_id=pad)
    eos = () if tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, eos_token_ids=eos, pad_token_id=pad)
    t0 = time.perf_counter()
    out = jax.block_until_ready(generate(model.graphdef, model.params, tokens, mask, jax.random.key(args.seed),
                                         cfg))
    gen_s = time.perf_counter() - t0
    for row, prompt in enumerate(prompts):
        n = int(np.asarray(out.mask_BxN[row]).sum())
        ids = np.asarray(out.tokens_BxN[row])[:n].tolist()
        print(json.dumps({"prompt": prompt, "response": tokenizer.decode(ids, skip_special_tokens=True),
                          "tokens": n, "logprob": float(np.asarray(out.logprobs_BxN[row]).sum())}))
    print(json.dumps({"model": str(args.model), "params_m": round(model.num_params() / 1e6, 1),
                      "load_s": round(load_s, 1), "generate_s_incl_compile": round(gen_s, 1)}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
