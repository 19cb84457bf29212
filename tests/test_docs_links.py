"""Every relative link and image in the repository's markdown files points at a file that exists,
and every `#anchor` at a heading of its target markdown file (GitHub's heading ids).

Links inside fenced code blocks and inline code spans are not links; http(s), mailto and other
schemes are not checked (no network in tests).
"""
import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", "runs", "wandb", ".git", ".pytest_cache", "node_modules", ".cache", "build"}

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_files() -> list[Path]:
    """The .md files git tracks or would track (not ignored), or every .md outside build and run folders without git."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.md"], cwd=ROOT, capture_output=True, check=True)
        files = [ROOT / p for p in out.stdout.decode().split("\0") if p]
        if files:
            return sorted(f for f in files if f.is_file())
    except (OSError, subprocess.CalledProcessError):
        pass
    return sorted(p for p in ROOT.rglob("*.md") if not SKIP_DIRS & set(p.relative_to(ROOT).parts))


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks, with inline code spans blanked."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield n, CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)


def slug(heading: str) -> str:
    """GitHub's id for a heading: markup dropped, lower case, punctuation removed, spaces -> '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    kept = "".join(ch for ch in text
                   if ch.isalnum() or ch in " -_" or unicodedata.category(ch).startswith("M"))
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            base = slug(m.group(2))
            k = seen.get(base, 0)
            seen[base] = k + 1
            out.add(base if k == 0 else f"{base}-{k}")
    out.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", path.read_text(encoding="utf-8")))
    return out


def broken_links(md: Path) -> list[str]:
    problems = []
    for n, line in prose_lines(md.read_text(encoding="utf-8")):
        for m in LINK.finditer(line):
            target = m.group(1)
            if not target or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
                continue                                   # a URL (http:, mailto:, ...): not checked
            path_part, _, fragment = target.partition("#")
            dest = md if not path_part else (md.parent / unquote(path_part)).resolve()
            where = f"{md.relative_to(ROOT)}:{n}: ({target})"
            if path_part.startswith("/"):
                problems.append(f"{where}: absolute path; use a path relative to the file")
            elif not dest.exists():
                problems.append(f"{where}: {path_part} does not exist")
            elif fragment and dest.suffix == ".md" and unquote(fragment).lower() not in anchors(dest):
                problems.append(f"{where}: no heading with id #{fragment} in {dest.relative_to(ROOT)}")
    return problems


def test_slug_matches_github_ids():
    assert slug("Sweeps (`experiments/sweep.py`, `rlhf_jax.sweep`)") == "sweeps-experimentssweeppy-rlhf_jaxsweep"
    assert slug("Gao et al. 2022: over-optimisation against RM size") == "gao-et-al-2022-over-optimisation-against-rm-size"
    assert slug("InfoRM (Miao et al. 2024): gold reward and CSI over PPO, against a β sweep") == \
        "inform-miao-et-al-2024-gold-reward-and-csi-over-ppo-against-a-β-sweep"
    assert slug("A [linked](x.md) heading → on") == "a-linked-heading--on"


def test_checker_finds_a_broken_link(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "b.md").write_text("# Real heading\n")
    md = tmp_path / "a.md"
    md.write_text("[ok](b.md#real-heading) `[code](nope.md)`\n```\n[fenced](nope.md)\n```\n"
                  "[gone](missing.md) [bad anchor](b.md#unreal) ![img](fig.png) [web](https://x.y/z)\n")
    problems = broken_links(md)
    assert len(problems) == 3, problems
    assert "missing.md does not exist" in problems[0]
    assert "#unreal" in problems[1] and "fig.png does not exist" in problems[2]


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(md):
    problems = broken_links(md)
    assert not problems, "broken links:\n" + "\n".join(problems)
