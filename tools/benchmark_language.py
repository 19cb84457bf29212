"""The curation language filter: offline language detectors against the function-word heuristic
it replaced (kept here only, for this comparison).

    RLHF_JAX_DATA_DIR=../shared/data python tools/benchmark_language.py --english 1000

English side: the first N Alpaca rows (instruction, input and output joined, without the
English prompt template). Non-English side: the 60 hand-written sentences in 15 languages of
rlhf_jax/data/language_samples.py. For each detector: English kept, non-English rejected, the
non-English languages it let through, load time and mean time per text. Prints one JSON object.
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf_jax.data.language_samples import NON_ENGLISH  # noqa: E402
from rlhf_jax.data.sources import iter_rows  # noqa: E402
from rlhf_jax.paths import data_dir  # noqa: E402
from tools._common import parser  # noqa: E402

# --- the replaced heuristic, verbatim from rlhf_jax/data/curate.py ------------------------------
ENGLISH_WORDS = frozenset("the a an and or of to in is are was were be it that this for on with as at by from "
                          "you i he she we they not have has do does what how why can will would your my".split())


def english_score(text: str) -> float:
    words = re.findall(r"[a-zA-Z']+", text.lower())
    return sum(w in ENGLISH_WORDS for w in words) / max(1, len(re.findall(r"\S+", text)))
# ---------------------------------------------------------------------------------------------


def heuristic():
    return lambda text: english_score(text) >= 0.05


def lingua(low_accuracy: bool = False):
    from lingua import Language, LanguageDetectorBuilder
    builder = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models()
    detector = (builder.with_low_accuracy_mode() if low_accuracy else builder).build()
    return lambda text: detector.detect_language_of(text) == Language.ENGLISH


def langid():
    from langid.langid import LanguageIdentifier, model
    identifier = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    return lambda text: identifier.classify(text)[0] == "en"


def langdetect():
    from langdetect import DetectorFactory, LangDetectException, detect
    DetectorFactory.seed = 0

    def is_english(text):
        try:
            return detect(text) == "en"
        except LangDetectException:  # no letters at all
            return False

    return is_english


DETECTORS = {"heuristic": heuristic, "lingua": lingua, "lingua_low_accuracy": lambda: lingua(True),
             "langid": langid, "langdetect": langdetect}


def alpaca_texts(n: int) -> list[str]:
    root = data_dir()
    if root is None:
        raise SystemExit("set RLHF_JAX_DATA_DIR to the data directory (alpaca_5000.json.gz)")
    out = []
    for _, row in iter_rows(root / "alpaca_5000.json.gz"):
        out.append("\n".join(row[k] for k in ("instruction", "input", "output") if row.get(k)))
        if len(out) == n:
            break
    return out


def measure(name: str, english: list[str], foreign: list[tuple[str, str]]) -> dict:
    start = time.perf_counter()
    is_english = DETECTORS[name]()
    load = time.perf_counter() - start
    start = time.perf_counter()
    kept = [is_english(t) for t in english]
    passed = [(lang, is_english(t)) for lang, t in foreign]
    per_text = (time.perf_counter() - start) / (len(english) + len(foreign))
    wrong_english = [t[:80] for t, k in zip(english, kept) if not k]
    return {"english_kept": f"{sum(kept)}/{len(english)}", "english_recall": round(sum(kept) / len(english), 4),
            "non_english_rejected": f"{sum(not p for _, p in passed)}/{len(foreign)}",
            "non_english_let_through": sorted(lang for lang, p in passed if p),
            "accuracy": round((sum(kept) + sum(not p for _, p in passed)) / (len(english) + len(foreign)), 4),
            "load_seconds": round(load, 2), "ms_per_text": round(1000 * per_text, 3),
            "english_rejected_examples": wrong_english[:5]}


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--english", type=int, default=1000, help="Alpaca rows on the English side")
    ap.add_argument("--detectors", default=",".join(DETECTORS))
    args = ap.parse_args(argv)
    english = alpaca_texts(args.english)
    out = {"english_texts": len(english), "non_english_texts": len(NON_ENGLISH),
           "detectors": {name: measure(name, english, NON_ENGLISH) for name in args.detectors.split(",")}}
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
