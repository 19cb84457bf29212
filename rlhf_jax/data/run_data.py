"""The records and token arrays a run reads, from the task world or from files, named as the
stages ask for them: sft_train, sft_val, rm_train, rm_val, prompts, eval_prompts, ptx, ptx_val.

Records are read once per run and kept; arrays are tokenised on demand. A dataset the
config names but no listed stage reads is never loaded.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np

from rlhf_jax.data import corpora, synthetic
from rlhf_jax.data.sources import read_records
from rlhf_jax.data.tokenize import TokenizeConfig, prompt_arrays, ranking_arrays, sft_arrays
from rlhf_jax.errors import UserError


_SLICE = re.compile(r"^(?P<spec>.+)\[(?P<start>[^\[\]:]*):(?P<stop>[^\[\]:]*)\]$")


def split_slice(spec: str) -> tuple[str, int | None, int | None]:
    """("corpus:hh_rlhf", 200, 1200) from "corpus:hh_rlhf[200:1200]": a source with rows
    [start, stop) of its records (Python's slice, non-negative bounds, either may be empty);
    (spec, None, None) without a trailing slice."""
    m = _SLICE.match(spec)
    if not m:
        return spec, None, None
    bounds = []
    for name in ("start", "stop"):
        text = m.group(name).strip()
        if text and not text.isdigit():
            raise UserError(f"data source {spec!r}: the slice's {name} {text!r} must be a non-negative integer "
                            "(SOURCE[START:STOP], e.g. corpus:hh_rlhf[200:1200])")
        bounds.append(int(text) if text else None)
    start, stop = bounds
    if start is not None and stop is not None and stop <= start:
        raise UserError(f"data source {spec!r}: the slice [{start}:{stop}] is empty (STOP must exceed START)")
    return m.group("spec"), start, stop


def read_source(spec: str, kind: str, policy: str) -> list[dict]:
    """A data path, or "corpus:NAME" for a reader in `rlhf_jax.data.corpora`, with keyword
    arguments for it if any ("corpus:imdb_sft?limit=2000&seed=1": integers, floats or strings),
    optionally cut to rows [START:STOP) of its valid records ("corpus:hh_rlhf[200:1200]": disjoint
    parts of one file for runs that must not share rows); prints the load report."""
    spec, start, stop = split_slice(spec)
    records = _read_whole(spec, kind, policy)
    if start is None and stop is None:
        return records
    lo, hi = start or 0, len(records) if stop is None else stop
    if hi > len(records) or lo >= hi:
        raise UserError(f"data source {spec}[{'' if start is None else start}:{'' if stop is None else stop}]: "
                        f"rows [{lo}:{hi}) are not within the {len(records)} records {spec} holds")
    print(f"[data] {spec}: rows [{lo}:{hi}) of {len(records)}", flush=True)
    return records[lo:hi]


def _read_whole(spec: str, kind: str, policy: str) -> list[dict]:
    if spec.startswith("corpus:"):
        name, _, query = spec[7:].partition("?")
        if name not in corpora.READERS:
            raise UserError(f"data source {spec!r}: no corpus reader {name!r}; the readers: {sorted(corpora.READERS)}")
        reader = corpora.READERS[name]
        try:
            records, report = reader(**reader_call(spec, reader, reader_arguments(query), policy))
        except corpora.ReaderArgumentError as err:
            raise UserError(f"data source {spec!r}: {err}") from err
    else:
        records, report = read_records(Path(spec).expanduser(), kind, policy=policy)
    if not report.logged:  # a summary with skips was logged as a warning where the rows were read
        print(report.summary(), flush=True)
    return records


def reader_call(spec: str, reader, arguments: dict, policy: str) -> dict:
    """A corpus reader's keyword arguments: the spec's, and the run's bad-row policy where the
    reader takes one. An argument the reader does not take is refused naming the spec and listing
    those it takes (a value it refuses, the reader refuses itself)."""
    params = inspect.signature(reader).parameters
    takes = [k for k, p in params.items() if p.kind is p.KEYWORD_ONLY and k not in ("policy", "tokenizer")]
    if "policy" in arguments:
        raise UserError(f"data source {spec!r}: the bad-row policy is the run's (config.data.policy), not the spec's")
    unknown = [k for k in arguments if k not in takes]
    if unknown:
        raise UserError(f"data source {spec!r}: reader {reader.__name__!r} takes no argument {unknown[0]!r}; "
                        f"it takes {takes}")
    return {**arguments, **({"policy": policy} if "policy" in params else {})}


def reader_arguments(query: str) -> dict:
    """{"limit": 2000, "split": "test"} from "limit=2000&split=test" (numbers parsed as numbers)."""
    out = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"corpus reader argument {item!r}: expected KEY=VALUE")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        out[key] = value
    return out


WORLD_PRETRAIN = "world:pretrain"  # data.ptx naming the task world's pretraining text (synthetic.pretrain_records)


def world_config(c) -> synthetic.WorldConfig:
    """The task world of `config.data.world` (comma-separated lists become tuples)."""
    w = dict(c.data.world)
    w["tasks"] = tuple(t for t in w["tasks"].split(",") if t)
    w["perturbations"] = tuple(t for t in w["perturbations"].split(",") if t)
    return synthetic.WorldConfig(**w)


class RunData:
    """Records by name (cached) and their token arrays, for one run's config and tokenizer."""

    def __init__(self, config, tokenizer, world: synthetic.WorldConfig | None):
        self.c, self.tokenizer, self.world = config, tokenizer, world
        self.tcfg = TokenizeConfig(max_len=config.data.max_len, max_prompt_len=config.data.max_prompt_len,
                                   template=config.data.template or None)
        self._records: dict[str, list[dict]] = {}
        self._derived: set[str] = set()

    def records(self, name: str) -> list[dict]:
        if name not in self._records:
            self._records.update(self._world_records(name) if self.world is not None else self._file_records(name))
        if name not in self._records:
            raise UserError(f"no {name!r} records: the config names no source for them (data.source = "
                            f"{self.c.data.source!r}; see config.data)")
        return self._records[name]

    def set_records(self, name: str, records: list[dict]) -> None:
        """Replace a set by one derived during the run (the task world's rankings of the SFT
        policy's own samples)."""
        self._records[name] = records
        self._derived.add(name)

    def derived(self, name: str) -> bool:
        return name in self._derived

    def _world_records(self, name: str) -> dict[str, list[dict]]:
        c, w = self.c.data, self.world
        pretrain = c.ptx == WORLD_PRETRAIN  # the world's own pretraining text (else ptx = demonstrations)
        make = {"sft_train": lambda: synthetic.sft_records(w, c.n_sft, "train")
                + synthetic.pretrain_records(w, c.n_sft_pretrain, "train"),
                "sft_val": lambda: synthetic.sft_records(w, c.n_sft_val, "val"),
                "rm_train": lambda: synthetic.ranking_records(w, c.n_rankings, c.k, "train"),
                "rm_val": lambda: synthetic.ranking_records(w, c.n_rankings_val, c.k, "val"),
                "prompts": lambda: synthetic.prompts(w, c.n_prompts, "train"),
                "eval_prompts": lambda: synthetic.prompts(w, self.c.heldout.n_prompts, "eval"),
                "ptx": lambda: (synthetic.pretrain_records(w, c.n_ptx, "train") if pretrain
                                else synthetic.sft_records(w, c.n_ptx, "ptx"))}
        if pretrain:
            make["ptx_val"] = lambda: synthetic.pretrain_records(w, c.n_sft_val, "val")
        return {name: make[name]()} if name in make else {}

    def _file_records(self, name: str) -> dict[str, list[dict]]:
        c = self.c.data
        kind, spec, limit = {"sft": ("sft", c.sft_train, c.n_sft),
                             "rm": ("preference", c.rm_train, c.n_rankings)}.get(name.split("_")[0], (None, None, None))
        if kind is not None and spec:
            records = read_source(spec, kind, c.policy)  # preference: pairs or K-wise rankings
            prefix = name.split("_")[0]
            if prefix == "rm" and c.rm_val:  # held-out pairs of their own: every training record is trained on
                return {"rm_train": records[:limit], "rm_val": read_source(c.rm_val, kind, c.policy)}
            n_val = max(1, int(len(records) * c.val_fraction))
            return {f"{prefix}_train": records[n_val:n_val + limit], f"{prefix}_val": records[:n_val]}
        if name in ("prompts", "eval_prompts") and c.prompts:
            prompts = [{"prompt": r["prompt"]} for r in read_source(c.prompts, "prompt", c.policy)]
            n_eval = self.c.heldout.n_prompts
            return {"eval_prompts": prompts[:n_eval], "prompts": prompts[n_eval:n_eval + c.n_prompts]}
        if name.startswith("ptx") and c.ptx == WORLD_PRETRAIN:
            raise UserError(f"data.ptx = {WORLD_PRETRAIN!r} is the task world's text: it needs data.source = synthetic")
        if name == "ptx" and c.ptx:
            return {"ptx": read_source(c.ptx, "sft", c.policy)[:c.n_ptx]}
        return {}

    def arrays(self, name: str, *, pack: bool | None = None) -> dict[str, np.ndarray]:
        """Token arrays: SFT-style (tokens, loss_mask, segment_ids, positions; packed rows when
        `pack`, default the config's sft.pack for the demonstrations), rankings [N, K, T], or
        left-padded prompts (prompt, prompt_mask)."""
        r = self.records(name)
        if name.startswith(("sft", "ptx")):
            pack = (self.c.sft.pack and not name.startswith("ptx")) if pack is None else pack
            arrays, stats = sft_arrays(r, self.tokenizer, self.tcfg, pack_rows=pack)
        elif name.startswith("rm"):
            arrays, stats = ranking_arrays(r, self.tokenizer, self.tcfg)
        else:
            arrays, stats = prompt_arrays(r, self.tokenizer, self.tcfg)
            arrays = {"prompt": arrays["tokens"], "prompt_mask": arrays["mask"]}
        if stats.get("prompt_truncated") or stats.get("response_truncated"):
            print(f"[data] {name}: {stats}", flush=True)
        return arrays
