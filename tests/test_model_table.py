"""README's model tables are tools/benchmark.py's output: every model visattn registers has a row, and each row is
exactly what the tool renders from its meta-device count and visattn/published.csv (run
``tools/benchmark.py --update-readme`` after changing a model or the CSV)."""

import os

import pytest

import visattn
from tests.meta import NoInitOnMeta
from visattn import benchmark as bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PUBLISHED = bench.read_published(bench.PUBLISHED)
HINT = "run tools/benchmark.py --update-readme"


def _readme_tables() -> dict[str, list[str]]:
    with open(README, encoding="utf-8") as f:
        text = f.read()
    return {kind: bench.readme_table(text, kind).splitlines() for kind in bench.README_HEADERS}


def _readme_rows() -> dict[str, str]:
    return {line.split("`")[1]: line for lines in _readme_tables().values() for line in lines[2:]}


def test_every_registered_model_has_a_published_and_a_readme_row():
    assert bench.readme_models(PUBLISHED) == list(PUBLISHED)
    assert set(visattn.list_models()) <= set(_readme_rows())


def test_tables_have_the_tools_headers_and_the_published_models_in_order():
    for kind, lines in _readme_tables().items():
        assert "\n".join(lines[:2]) == bench.README_HEADERS[kind], HINT
        names = [line.split("`")[1] for line in lines[2:]]
        assert names == [name for name in PUBLISHED if bench.model_kind(name) == kind], HINT


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_row_is_what_the_tool_renders(name):
    with NoInitOnMeta():  # the count builds on meta, where initialisers have nothing to fill
        counts = bench.count_model(name)
    rendered = bench.readme_row(name, counts, PUBLISHED[name])
    assert _readme_rows().get(name) == rendered, HINT
