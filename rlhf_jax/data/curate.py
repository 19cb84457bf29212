"""Curation: exact and near-duplicate removal (datasketch MinHash LSH), PII scrubbing, length and
language filters (lingua), deterministic splits by prompt hash, format conversion, and a
statistics report.

All functions take and return lists of canonical records (records.py) plus counts, so a
`CurateConfig` drives the same steps from the CLI (`tools/curate.py`) or from code.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import re
import zlib
from typing import Any, Iterable

import numpy as np
from datasketch import MinHash, MinHashLSH

from rlhf_jax.data.records import ranking_pairs


@dataclasses.dataclass(frozen=True)
class CurateConfig:
    exact_dedup: bool = True
    near_dup_threshold: float | None = 0.8  # shingle Jaccard (MinHash LSH candidates); None disables
    shingle: int = 5  # words per shingle
    num_perm: int = 64
    bands: int = 16
    scrub_pii: bool = True
    min_chars: int = 1
    max_chars: int | None = 20_000
    language: str | None = "en"  # ISO 639-1 code of the language to keep (lingua); None disables
    split_fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)
    split_salt: str = ""

    def __post_init__(self):
        if self.near_dup_threshold is not None and not 0 < self.near_dup_threshold <= 1:
            raise ValueError(f"near_dup_threshold={self.near_dup_threshold} must be in (0, 1]")
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm={self.num_perm} must be a multiple of bands={self.bands}")
        if abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ValueError(f"split_fractions={self.split_fractions} must sum to 1")
        if self.language is not None:
            from lingua import IsoCode639_1
            try:
                IsoCode639_1.from_str(self.language)
            except ValueError:
                raise ValueError(f"language={self.language!r} is not an ISO 639-1 code lingua knows "
                                 "(e.g. 'en', 'fr')") from None


# --- text views of a record ----------------------------------------------------------------

def prompt_text(record: dict) -> str:
    p = record.get("prompt", "")
    if isinstance(p, list):
        return "\n".join(m["content"] for m in p)
    if "messages" in record:
        return "\n".join(m["content"] for m in record["messages"] if m["role"] != "assistant")
    return p or record.get("text", "")


def record_text(record: dict) -> str:
    """All of a record's text, for dedup and filters."""
    parts = [prompt_text(record)]
    for key in ("completion", "chosen", "rejected", "response", "reference"):
        if isinstance(record.get(key), str):
            parts.append(record[key])
    parts += record.get("responses", [])
    if "messages" in record:
        parts += [m["content"] for m in record["messages"] if m["role"] == "assistant"]
    return "\n".join(parts)


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


# --- duplicates ------------------------------------------------------------------------------

def exact_dedup(records: list[dict]) -> tuple[list[dict], int]:
    seen, out = set(), []
    for r in records:
        key = hashlib.sha256(_normalise(record_text(r)).encode()).digest()
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out, len(records) - len(out)


MINHASH_SEED = 1
_BULK = 1024  # texts hashed per MinHash.bulk call


def shingle_hashes(text: str, cfg: CurateConfig) -> np.ndarray:
    """Sorted CRC-32 hashes of the text's distinct shingles: word `cfg.shingle`-grams of the
    normalised text (character 5-grams for very short texts). CRC-32 is deterministic across
    runs and cheap; MinHash's random affine permutations are applied on top of it."""
    words = _normalise(text).split()
    if len(words) >= cfg.shingle:
        grams = {" ".join(words[i:i + cfg.shingle]) for i in range(len(words) - cfg.shingle + 1)}
    else:
        t = " ".join(words)
        grams = {t[i:i + 5] for i in range(max(1, len(t) - 4))}
    return np.unique(np.fromiter((zlib.crc32(g.encode("utf-8", "surrogatepass")) for g in grams), np.uint32,
                                 len(grams)))


def minhashes(hash_sets: list[np.ndarray], cfg: CurateConfig) -> list[MinHash]:
    """datasketch MinHashes (num_perm permutations, one fixed seed) of shingle hash sets."""
    return MinHash.bulk([h.tolist() for h in hash_sets], num_perm=cfg.num_perm, seed=MINHASH_SEED, hashfunc=int)


def minhash(text: str, cfg: CurateConfig) -> np.ndarray:
    """The num_perm MinHash values of one text; the fraction of equal positions estimates Jaccard."""
    return minhashes([shingle_hashes(text, cfg)], cfg)[0].hashvalues


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted hash sets."""
    both = len(np.intersect1d(a, b, assume_unique=True))
    return both / (len(a) + len(b) - both)


def near_dedup(records: list[dict], cfg: CurateConfig) -> tuple[list[dict], int]:
    """Drop records whose shingle Jaccard similarity with an earlier kept record >= threshold.

    Candidates come from datasketch's MinHashLSH (`bands` bands of num_perm/bands rows), so each
    record is compared only with the kept records it shares a band with; a candidate is then
    checked on its exact Jaccard similarity, not on the noisy MinHash estimate (about +-0.06 at
    64 permutations), so the threshold means what it says for every pair the LSH finds.
    """
    if cfg.near_dup_threshold is None:
        return records, 0
    lsh = MinHashLSH(threshold=cfg.near_dup_threshold, num_perm=cfg.num_perm,
                     params=(cfg.bands, cfg.num_perm // cfg.bands))
    kept, hashes = [], []
    for i in range(0, len(records), _BULK):
        chunk = records[i:i + _BULK]
        sets = [shingle_hashes(record_text(r), cfg) for r in chunk]
        for r, h, m in zip(chunk, sets, minhashes(sets, cfg)):
            if any(jaccard(hashes[j], h) >= cfg.near_dup_threshold for j in lsh.query(m)):
                continue
            lsh.insert(len(kept), m)
            kept.append(r)
            hashes.append(h)
    return kept, len(records) - len(kept)


# --- PII -------------------------------------------------------------------------------------

PII_PATTERNS = {
    "email": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
    # 4-digit groups or one 13-19 digit run, not part of a decimal number (Luhn-checked below)
    "card": re.compile(r"(?<![\d.,])(?:(?:\d{4}[ -]){3}\d{1,7}|\d{13,19})(?![\d.,]\d|\d)"),
    "ip": re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
    # not inside a longer digit run (card numbers, ids) and not a dotted version number
    "phone": re.compile(r"(?<![\w.])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])"
                        r"\d{3,4}[ .-]\d{3,4}(?!\w|[ .-]?\d|\.\w)"),
}


def _luhn(number: str) -> bool:
    digits = [int(d) for d in number if d.isdigit()][::-1]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(digits))
    return total % 10 == 0


def scrub_text(text: str, counts: collections.Counter) -> str:
    """Replace e-mails, card-like numbers (Luhn-valid), IPv4 addresses and phone numbers."""
    text, n = PII_PATTERNS["email"].subn("[EMAIL]", text)
    counts["email"] += n

    def card(m):
        if _luhn(m.group()) and set(m.group()) - set("01 -"):  # binary strings are not cards
            counts["card"] += 1
            return "[CARD]"
        return m.group()

    text = PII_PATTERNS["card"].sub(card, text)
    text, n = PII_PATTERNS["ip"].subn("[IP]", text)
    counts["ip"] += n
    text, n = PII_PATTERNS["phone"].subn("[PHONE]", text)
    counts["phone"] += n
    return text


def scrub_record(record: Any, counts: collections.Counter) -> Any:
    if isinstance(record, str):
        return scrub_text(record, counts)
    if isinstance(record, list):
        return [scrub_record(x, counts) for x in record]
    if isinstance(record, dict):
        return {k: (v if k in ("role", "category") else scrub_record(v, counts)) for k, v in record.items()}
    return record


# --- filters ---------------------------------------------------------------------------------

DETECT_CHARS = 1000  # enough text to tell the language; bounds the time a long record costs


@functools.lru_cache(maxsize=1)
def _detector():
    """lingua's detector over all its 75 languages; its models ship in the wheel (no network) and
    load lazily, per script met, on first use (about 1 GB for Latin-script text)."""
    from lingua import LanguageDetectorBuilder
    return LanguageDetectorBuilder.from_all_languages().build()


def detect_language(text: str) -> str | None:
    """ISO 639-1 code ('en', 'fr', ...) of the text's language, or None when lingua cannot tell."""
    language = _detector().detect_language_of(text[:DETECT_CHARS])
    return language.iso_code_639_1.name.lower() if language is not None else None


def keep_record(record: dict, cfg: CurateConfig) -> str | None:
    """None to keep, else the reason to drop."""
    n = len(record_text(record))
    if n < cfg.min_chars:
        return "too_short"
    if cfg.max_chars is not None and n > cfg.max_chars:
        return "too_long"
    if cfg.language is not None and detect_language(record_text(record)) != cfg.language:
        return "not_english" if cfg.language == "en" else f"not_{cfg.language}"
    return None


# --- splits and conversion -------------------------------------------------------------------

def split_of(record: dict, cfg: CurateConfig) -> str:
    """'train' | 'validation' | 'test' from a hash of the prompt: one prompt, one split."""
    digest = hashlib.sha256((cfg.split_salt + _normalise(prompt_text(record))).encode()).digest()
    u = int.from_bytes(digest[:8], "little") / 2 ** 64
    train, val, _ = cfg.split_fractions
    return "train" if u < train else ("validation" if u < train + val else "test")


def convert(records: Iterable[dict], source: str, target: str) -> list[dict]:
    """Between kinds: ranking -> pair (all C(K,2) pairs, ties dropped), pair -> ranking (K=2),
    sft prompt/completion <-> sft chat messages, pair/ranking -> prompt, sft -> text; a
    "preference" record converts as the pair or ranking it is."""
    out = []
    for r in records:
        if source == "preference":
            out += convert([r], "ranking" if "responses" in r else "pair", target)
        elif source == target:
            out.append(r)
        elif (source, target) == ("ranking", "pair"):
            out += [{"prompt": r["prompt"], "chosen": r["responses"][w], "rejected": r["responses"][l]}
                    for w, l in ranking_pairs(r["ranks"])]
        elif (source, target) == ("pair", "ranking"):
            out.append({"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]], "ranks": [0, 1]})
        elif (source, target) == ("sft", "chat") and "messages" not in r:
            user = r["prompt"] if isinstance(r["prompt"], list) else [{"role": "user", "content": r["prompt"]}]
            out.append({"messages": user + [{"role": "assistant", "content": r["completion"]}]})
        elif (source, target) == ("sft", "chat"):
            out.append(r)
        elif source in ("pair", "ranking", "sft", "fine_grained") and target == "prompt":
            if "messages" in r:
                out.append({"prompt": r["messages"][:-1]})
            else:
                out.append({"prompt": r["prompt"]})
        elif (source, target) == ("sft", "text"):
            out.append({"text": record_text(r)})
        else:
            raise ValueError(f"no conversion from {source!r} to {target!r}")
    return out


# --- the whole pass --------------------------------------------------------------------------

def curate(records: list[dict], cfg: CurateConfig) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """Filter, scrub, dedup and split; returns ({split: records}, counts)."""
    counts: dict[str, Any] = {"input": len(records)}
    dropped = collections.Counter()
    kept = []
    for r in records:
        reason = keep_record(r, cfg)
        if reason:
            dropped[reason] += 1
        else:
            kept.append(r)
    counts["filtered"] = dict(dropped)
    pii = collections.Counter()
    if cfg.scrub_pii:
        kept = [scrub_record(r, pii) for r in kept]
    counts["pii_scrubbed"] = {k: pii[k] for k in PII_PATTERNS}
    counts["exact_duplicates"] = 0
    if cfg.exact_dedup:
        kept, counts["exact_duplicates"] = exact_dedup(kept)
    kept, counts["near_duplicates"] = near_dedup(kept, cfg)
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for r in kept:
        splits[split_of(r, cfg)].append(r)
    counts["output"] = {k: len(v) for k, v in splits.items()}
    return splits, counts


def length_stats(records: list[dict]) -> dict[str, Any]:
    prompt_len = np.array([len(prompt_text(r)) for r in records]) if records else np.zeros(0)
    total_len = np.array([len(record_text(r)) for r in records]) if records else np.zeros(0)

    def summary(x):
        if not len(x):
            return {}
        return {"mean": float(x.mean()), "p50": float(np.percentile(x, 50)), "p90": float(np.percentile(x, 90)),
                "max": int(x.max()), "histogram": np.histogram(x, bins=20)[0].tolist(),
                "bin_edges": np.histogram(x, bins=20)[1].round(1).tolist()}

    return {"prompt_chars": summary(prompt_len), "record_chars": summary(total_len)}
