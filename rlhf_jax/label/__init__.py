"""rlhf_jax.label: a local web app that collects human feedback (demonstrations, rankings, ratings and
error spans) from annotators with access tokens, and exports it as the pipeline's records.

    python -m rlhf_jax.label annotators add --db labels.sqlite --name ann1
    python -m rlhf_jax.label batch --db labels.sqlite --name b1 --kind ranking --responses rows.jsonl --overlap 3
    python -m rlhf_jax.label serve --db labels.sqlite --port 8000
    python -m rlhf_jax.label export --db labels.sqlite --kind ranking --consensus borda --out ranking.jsonl

See docs/labelling.md. Modules: store (schema, SQLite/PostgreSQL), values (label validation), server
(FastAPI app), batch (items and queues), export (consensus to records), cli.
"""
from rlhf_jax.label.store import ITEM_KINDS  # noqa: F401
