"""How far an exported GGUF's logits and greedy answers are from its source checkpoint's.

    python -m rlhf_jax.export --model SRC --type q8_0 --out /tmp/m.q8_0.gguf
    python tools/gguf_roundtrip.py --source SRC --exported /tmp/m.q8_0.gguf [--exported ...]

For each exported file: the largest and mean |logit difference| over a chat prompt's positions, how
often the argmax agrees, transformers' GGUF loader against ours on the same file, and whether the
greedy answers (32 tokens) to two chat prompts are the source's (else the common prefix length).
Prints JSON lines. SRC defaults to the fetched SmolLM2-135M-Instruct GGUF.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rlhf_jax.generate import SamplingConfig, generate, left_pad  # noqa: E402
from rlhf_jax.paths import smollm2_path  # noqa: E402
from rlhf_jax.synth.generator import load_model  # noqa: E402
from tools._common import parser  # noqa: E402

PROMPTS = ["What is the capital of France?", "Give me three tips for staying healthy."]


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--source", default=str(smollm2_path()))
    ap.add_argument("--exported", action="append", required=True, help="a .gguf file (repeatable)")
    args = ap.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM
    source, tok = load_model(args.source)
    ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
           for p in PROMPTS]
    ids = [list(x["input_ids"] if hasattr(x, "keys") else x) for x in ids]
    x = np.array([ids[0]])
    tokens, mask = left_pad(ids, pad_id=tok.pad_token_id)
    cfg = SamplingConfig(max_new_tokens=32, temperature=0.0, eos_token_ids=(tok.eos_token_id,),
                         pad_token_id=tok.pad_token_id)

    def greedy(m):
        g = generate(m.graphdef, m.params, tokens, mask, jax.random.key(0), cfg)
        return [np.asarray(g.tokens_BxN[r])[: int(g.mask_BxN[r].sum())].tolist() for r in range(len(ids))]

    ref, ref_answers = np.asarray(source(x)[0]), greedy(source)
    print(json.dumps({"source": args.source, "max_abs_logit": float(np.abs(ref).max()),
                      "answers": [tok.decode(a, skip_special_tokens=True) for a in ref_answers]}))
    for path in map(Path, args.exported):
        model, _ = load_model(path)
        got = np.asarray(model(x)[0])
        theirs = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True,
                                                      dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            their_logits = theirs(torch.tensor(x)).logits.numpy()
        answers = greedy(model)
        prefix = [next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))
                  for a, b in zip(ref_answers, answers)]
        print(json.dumps({"exported": str(path), "bytes": path.stat().st_size,
                          "max_abs_logit_error": float(np.abs(got - ref).max()),
                          "mean_abs_logit_error": float(np.abs(got - ref).mean()),
                          "argmax_agreement": float((got.argmax(-1) == ref.argmax(-1)).mean()),
                          "transformers_vs_ours_max_abs": float(np.abs(their_logits - got).max()),
                          "greedy_equal": answers == ref_answers, "greedy_common_prefix": prefix,
                          "answers": [tok.decode(a, skip_special_tokens=True) for a in answers]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
