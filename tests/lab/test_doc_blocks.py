"""Every code block of the README and of docs/*.md is either run by a named test, as written,
or marked as not run with the reason (tests/readme_blocks.py; docs/tests.md)."""

import pytest
from readme_blocks import RUN_BY, code_blocks, marked_blocks
from run_settings import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_block_is_run_by_a_test_or_marked_not_run(document):
    unmarked = [line for line, _, marker in marked_blocks(document) if marker is None]
    assert not unmarked, (f"{document.relative_to(ROOT)}: the blocks at lines {unmarked} have no "
                          "'<!-- run by tests/FILE.py -->' or '<!-- not run: REASON -->' on the line above")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_run_by_marker_names_a_test_that_reads_this_document(document):
    name = str(document.relative_to(ROOT))
    for line, _, marker in marked_blocks(document):
        match = RUN_BY.match(marker or "")
        if match:
            test = ROOT / match.group(1)
            assert test.is_file(), f"{name}:{line}: {match.group(1)} does not exist"
            source = test.read_text()
            assert "code_blocks(" in source and f'"{document.name}"' in source, (
                f"{name}:{line}: {match.group(1)} does not read the blocks of {name}")


def test_the_readme_library_blocks_are_the_ones_marked_run():
    """The README's run-by blocks are exactly the two the library test runs."""
    marked = [line for line, _, marker in marked_blocks(ROOT / "README.md") if marker and RUN_BY.match(marker)]
    assert len(marked) == len(code_blocks(ROOT / "README.md", "Use FedGMA in your own Flower app")) == 2


def test_the_checker_finds_indented_blocks_and_skips_generated_regions(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text("# D\n\n<!-- not run: x -->\n```bash\nls\n```\n\n1. step\n\n   ```toml\n   a = 1\n   ```\n"
                   "<!-- results:begin -->\n```bash\nfedgma report\n```\n<!-- results:end -->\n")
    assert marked_blocks(doc) == [(4, "bash", "<!-- not run: x -->"), (10, "toml", None)]
