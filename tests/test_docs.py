"""No tracked file cites a document that the repository does not hold: every markdown link to a
local file and every path ending in `.md` must name a file of the clone (from the citing file's
folder or from the repository's root)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A markdown link's target, up to an anchor or a title; and any token ending in `.md`.
_LINK = re.compile(r"\]\(([^)\s#]+)")
_MD_PATH = re.compile(r"(?<![\w./:-])([\w./-]*[\w-]\.md)\b")


def _tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in names
            if name.endswith((".py", ".md", ".toml", ".ipynb", ".yaml", ".txt", ".cfg"))
            or name in ("Makefile", ".ci/run")]


def cited_documents(path: Path) -> set[str]:
    text = path.read_text(errors="replace")
    # Link syntax only where markdown is written (in code, `f[i](x)` is a call).
    found = _LINK.findall(text) if path.suffix in (".md", ".ipynb") else []
    links = {t for t in found if not re.match(r"[a-z]+:", t)}
    return links | set(_MD_PATH.findall(text))


def test_every_cited_document_is_in_the_repository():
    missing = []
    for path in _tracked_text_files():
        if path == Path(__file__).resolve():
            continue  # its own examples of what a citation looks like
        for cited in cited_documents(path):
            # An absolute path names something outside any clone, even where it exists here.
            if cited.startswith("/") or not any((base / cited).exists()
                                                for base in (path.parent, ROOT)):
                missing.append(f"{path.relative_to(ROOT)} cites {cited}")
    assert not missing, "\n".join(sorted(missing))


def test_the_citation_finder_sees_links_and_paths(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("See [the contract](docs/CONTRACT.md#exit-codes), DOMAIN.md and "
                    "[a site](https://example.org/x.md); `/elsewhere/NOTES.md`.")
    assert cited_documents(page) == {"docs/CONTRACT.md", "DOMAIN.md", "/elsewhere/NOTES.md"}
