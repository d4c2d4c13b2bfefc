"""The package's layout: rooms without import cycles, small modules, the README in step."""

from __future__ import annotations

from support import layout

MAX_LINES = 500


def test_no_import_cycles():
    assert layout.cycles(layout.import_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert layout.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_module_over_500_lines():
    long = {
        name: n
        for name, path in layout.modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_readme_layout_section_matches_the_tree():
    """Regenerate with `python tests/support/layout.py`."""
    assert layout.readme_section(layout.README.read_text()) == layout.render()


def test_each_dvc_stage_depends_on_the_code_it_runs():
    """Regenerate with `python tests/support/layout.py`."""
    text = layout.DVC_YAML.read_text()
    assert layout.render_dvc_yaml(text) == text
    listed = layout.dvc_code_deps(text)
    for stage, module in layout.stage_modules().items():
        assert listed[stage] == layout.stage_code_deps(module), stage
    # The evaluate stage's own module is a dependency of evaluate, not of train before it.
    assert "src/mlplatform/evaluation/evaluate.py" in listed["evaluate"]
    assert "src/mlplatform/evaluation/evaluate.py" not in listed["train"]
    assert "src/mlplatform/evaluation/templates" in listed["card"]
