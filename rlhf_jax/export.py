"""Export a checkpoint for other runtimes: GGUF (llama.cpp, Ollama) or a transformers directory.

    python -m rlhf_jax.export --workdir runs/smollm2 --stage ppo --format gguf --out model.gguf --type q8_0
    python -m rlhf_jax.export --model ~/.cache/rlhf_jax/models/SmolLM2-135M-Instruct.Q4_1.gguf --out m.gguf
    python -m rlhf_jax.export --workdir runs/smollm2 --stage sft --format safetensors --out hf_dir

`--model` takes anything `rlhf_jax.synth.generator.load_model` reads (a HF directory, a GGUF file,
WORKDIR:STAGE). GGUF types: f32 (exact), f16, q8_0 (see rlhf_jax/models/gguf_export.py for their
error bounds). The tokenizer and its chat template go into the file; llama.cpp's pre-tokenizer
name is taken from the source GGUF when there is one (a model loaded from GGUF, or a run whose
base model is one), told from the tokenizer otherwise, or given with --tokenizer-pre.
Prints one JSON line: the output, its size, the time and each tensor's stored type.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from rlhf_jax.errors import UserError


def source_pre(spec: str) -> str | None:
    """The tokenizer.ggml.pre of the GGUF behind a model spec (the file itself, or a run's base model)."""
    from rlhf_jax.synth.generator import _stage_spec
    from rlhf_jax.workdir import stored_config
    path = Path(spec).expanduser()
    stage = _stage_spec(spec)
    if stage is not None:
        base = stored_config(stage[0]).get("model", {}).get("path") or ""
        path = Path(base).expanduser() if base else None
    if path is None or path.suffix != ".gguf" or not path.is_file():
        return None
    import gguf
    field = gguf.GGUFReader(str(path)).fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else None


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m rlhf_jax.export", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="a run directory; with --stage")
    src.add_argument("--model", help="a HF directory, a GGUF file or WORKDIR:STAGE")
    ap.add_argument("--stage", default="ppo", help="the stage whose final parameters are exported (default ppo)")
    ap.add_argument("--format", choices=("gguf", "safetensors"), default="gguf")
    ap.add_argument("--type", choices=("f32", "f16", "q8_0"), default="f16", help="GGUF tensor type (default f16)")
    ap.add_argument("--out", required=True, help="the .gguf file, or the directory for safetensors")
    ap.add_argument("--tokenizer-pre", default=None, help="llama.cpp pre-tokenizer name (gpt-2, smollm, llama-bpe...)")
    ap.add_argument("--name", default=None, help="general.name in the GGUF (default: the source)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    spec = f"{args.workdir}:{args.stage}" if args.workdir else args.model
    try:
        if args.workdir and not (Path(args.workdir) / "config.json").is_file():
            raise UserError(f"--workdir {args.workdir}: no config.json there (not a run directory)")
        import time

        from rlhf_jax.synth.generator import load_model
        t0 = time.perf_counter()
        model, tokenizer = load_model(spec)
        load_s = time.perf_counter() - t0
        if args.format == "safetensors":
            from rlhf_jax.models import save_pretrained
            t0 = time.perf_counter()
            out = save_pretrained(model, args.out, tokenizer)
            report = {"path": str(out), "bytes": sum(f.stat().st_size for f in Path(out).iterdir()),
                      "seconds": round(time.perf_counter() - t0, 2), "format": "safetensors"}
        else:
            from rlhf_jax.models.gguf_export import write_gguf
            pre = args.tokenizer_pre or source_pre(spec)
            report = write_gguf(model, tokenizer, args.out, args.type, pre=pre, name=args.name or str(spec))
            report["tensor_types"] = dict(Counter(report["tensor_types"].values()))
            report["format"] = "gguf"
        report.update(source=str(spec), load_seconds=round(load_s, 2))
    except (UserError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
