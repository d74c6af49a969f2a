"""The bases' cache key: the recipe and every source file a build may run, with no list kept by hand."""

import shutil

import pytest

from safeft.demo import cache


@pytest.fixture()
def package(tmp_path):
    """A copy of the package sources to edit."""
    dst = tmp_path / "safeft"
    shutil.copytree(cache.PACKAGE, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_editing_any_trainer_data_or_model_module_changes_the_key(package):
    recipe = {"a": 1}
    before = cache.recipe_key(recipe, package)
    edited = sorted(package.glob("train/*.py")) + sorted(package.glob("data/*.py")) + [
        package / "model.py", package / "loss.py", package / "distributed.py", package / "config.py",
        package / "export.py", package / "model_import.py", package / "demo" / "alignment.py",
        package / "eval" / "generate.py"]  # the real base answers benign prompts through the evaluator
    assert len(edited) > 12
    for path in edited:
        original = path.read_text()
        path.write_text(original + "\n# edited\n")
        assert cache.recipe_key(recipe, package) != before, path
        path.write_text(original)
    assert cache.recipe_key(recipe, package) == before


def test_a_new_module_is_covered_without_listing_it_and_the_recipe_counts(package):
    before = cache.recipe_key({"a": 1}, package)
    (package / "train" / "new_optimizer.py").write_text("LR = 1\n")
    assert cache.recipe_key({"a": 1}, package) != before
    assert cache.recipe_key({"a": 2}, package) != cache.recipe_key({"a": 1}, package)


def test_code_no_build_runs_is_left_out(package):
    before = cache.recipe_key({}, package)
    for rel in ("commands/demo.py", "demo/report.py", "cli.py"):
        (package / rel).write_text((package / rel).read_text() + "\n# edited\n")
    assert cache.recipe_key({}, package) == before
