"""python -m rlhf_jax.label: see rlhf_jax/label/cli.py."""
from rlhf_jax.label.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
