"""Every notebook in notebooks/ is the one make_notebooks.py writes, and executes top to
bottom (its cells assert what they show)."""

import importlib.util
import pathlib

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

HERE = pathlib.Path(__file__).parents[1] / "notebooks"
NOTEBOOKS = sorted(HERE.glob("*.ipynb"))


def _make_notebooks():
  spec = importlib.util.spec_from_file_location("make_notebooks", HERE / "make_notebooks.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_there_are_notebooks():
  assert NOTEBOOKS


def test_notebooks_are_generated_from_make_notebooks():
  """Each committed notebook is byte for byte what `python notebooks/make_notebooks.py` writes
  (edit the cells there, then run it)."""
  make = _make_notebooks()
  assert sorted(make.NOTEBOOKS) == [p.name for p in NOTEBOOKS]
  for name, cells in make.NOTEBOOKS.items():
    assert nbformat.writes(make.build(name, cells)) + "\n" == (HERE / name).read_text(), name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
