"""The manual agrees with the registries, and its links resolve."""

import pathlib
import re

from pipeline.cli import formats_table

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_format_and_family_tables_match_the_registries():
    formats, families = formats_table().split("\n\n")
    assert formats in (ROOT / "docs" / "formats.md").read_text()
    assert families in (ROOT / "docs" / "models.md").read_text()


def test_every_relative_link_in_the_readme_and_docs_resolves():
    pages = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *(ROOT / "docs").glob("*.md")]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            if not (page.parent / target).exists():
                broken.append(f"{page.name} -> {target}")
    assert not broken, broken
