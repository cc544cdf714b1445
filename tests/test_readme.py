"""The README a newcomer follows: it opens with the two set-up commands, its quick start is what `make demo` runs
(tests/engine/test_demo.py runs those commands), its Python examples run as written, and every link in it and in
docs/ resolves to a file and, for an anchor, to a heading of that file."""

import contextlib
import io
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def section(name: str, path: str = README) -> str:
    """The text of the level-2 section ``## name`` (up to the next level-2 heading)."""
    text = _read(path)
    start = text.index(f"\n## {name}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def code_blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang == language]


def quick_start_commands() -> list[list[str]]:
    """The quick start's shell commands, each as argv (comments and line continuations resolved)."""
    (block,) = code_blocks(section("Quick start"), "bash")
    lines = [line.split("#")[0].strip() for line in block.replace("\\\n", " ").splitlines()]
    return [shlex.split(line) for line in lines if line]


def makefile_demo_commands() -> list[list[str]]:
    """`make demo`'s recipe with the Makefile's variables as the README writes them."""
    text = _read(os.path.join(ROOT, "Makefile"))
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, re.M).group(1)
    commands = []
    for line in recipe.splitlines():
        line = line.strip()
        if line.startswith("@"):  # echo lines
            continue
        commands.append(shlex.split(line.replace("$(PY)", ".venv/bin/python").replace("$(OUT)", "runs/demo")))
    return commands


def test_readme_opens_with_the_two_setup_commands():
    first = FENCE.search(_read(README))
    commands = [line.split("#")[0].strip() for line in first.group(2).splitlines()]
    assert first.group(1) == "bash" and commands == ["make demo", "make test"]


def test_quick_start_is_what_make_demo_runs():
    commands = quick_start_commands()
    assert commands == makefile_demo_commands()
    assert [c[1] for c in commands] == ["tools/train.py", "tools/eval.py", "tools/predict.py", "tools/export.py",
                                       "tools/visualize.py"]


@pytest.mark.parametrize("name", ["Quick start", "Blocks in your own network"])
def test_python_examples_run_as_written(name):
    blocks = code_blocks(section(name), "python")
    assert blocks
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, f"README {name}", "exec"), {"__name__": "readme_example"})
        if name == "Quick start":
            assert out.getvalue().strip() == "['fsgnet', 'fsgnet_nogrm', 'herseg']"


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation other than - and _ dropped, spaces as -."""
    text = re.sub(r"`|\*", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _documents() -> list[str]:
    docs = [README, os.path.join(ROOT, "docs", "ARCHITECTURE.md")]
    models = os.path.join(ROOT, "docs", "models")
    return docs + sorted(os.path.join(models, name) for name in os.listdir(models))


@pytest.mark.parametrize("path", _documents(), ids=lambda p: os.path.relpath(p, ROOT))
def test_links_resolve(path):
    text = FENCE.sub("", _read(path))
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        if not os.path.exists(linked):
            broken.append(f"{target}: no file {os.path.relpath(linked, ROOT)}")
        elif anchor and anchor not in {_slug(h) for h in re.findall(r"^#+ (.*)$", FENCE.sub("", _read(linked)),
                                                                      re.M)}:
            broken.append(f"{target}: no heading #{anchor} in {os.path.relpath(linked, ROOT)}")
    assert not broken, broken


def test_every_family_page_is_linked_from_the_model_tables():
    text = _read(README)
    tables = "".join(re.findall(r"<!-- zoo-table:\w+:start -->(.*?)<!-- zoo-table", text, re.S))
    pages = sorted(os.listdir(os.path.join(ROOT, "docs", "models")))
    assert pages and all(f"(docs/models/{page})" in tables for page in pages)


def _config_table_paths() -> set[str]:
    """The config files named by the rows of the README's detection and segmentation table: a row's first name,
    and its variants (`-b`: BiFormer-B for the -s named first; `psa_p` for psa_s)."""
    paths = set()
    for row in re.findall(r"^\| (`configs/.*?) \|", section("Train and evaluate"), re.M):
        first, *variants = re.findall(r"`([^`]+)`", row)
        paths.add(first)
        for variant in variants:
            swapped = first.replace("-s_", f"{variant}_", 1) if variant.startswith("-") else first.replace(
                "psa_s", variant, 1)
            assert swapped != first, f"cannot expand {variant!r} of {first}"
            paths.add(swapped)
    return paths


def test_every_config_has_a_row_in_the_config_table():
    configs = {os.path.join("configs", kind, name) for kind in ("det", "seg")
               for name in os.listdir(os.path.join(ROOT, "configs", kind)) if name.endswith(".py")}
    listed = _config_table_paths()
    assert not listed - configs, f"rows for configs that do not exist: {sorted(listed - configs)}"
    assert not configs - listed, f"configs without a row: {sorted(configs - listed)}"
