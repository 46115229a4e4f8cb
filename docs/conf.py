"""Sphinx configuration of the rmsprop_jax documentation.

Build (from the repository root; offline, warnings are errors)::

  pip install ".[docs]" && sphinx-build -W -b html docs docs/_build/html

Pages are MyST Markdown; the notebooks in ``notebooks/`` are rendered from their
stored outputs (never executed) after ``_copy_notebooks`` mirrors them into
``docs/notebooks/`` (generated, git-ignored). No intersphinx: the build fetches
nothing, and MathJax is served from the build itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import shutil
import sys
from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
# Document the working tree's package, not a copy installed earlier, so that an
# edited docstring shows up without reinstalling.
sys.path.insert(0, str(ROOT))

import rmsprop_jax  # noqa: E402

project = "rmsprop_jax"
author = "The rmsprop_jax authors"
copyright = "2026, the rmsprop_jax authors"
release = rmsprop_jax.__version__
version = release

extensions = [
  "myst_nb",  # Markdown pages and .ipynb notebooks (includes myst_parser)
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",  # Google-style docstrings
  "sphinx.ext.mathjax",
  "sphinx_copybutton",
  # MathJax 3 shipped inside a PyPI package and copied into _static, so pages
  # render their math without a CDN (and the build needs no network).
  "sphinx-mathjax-offline",
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

# MyST: $...$ and $$...$$ math, ::: fences, and anchors for ### headings so that
# pages can link to [a section](page.md#its-title).
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Notebooks keep the outputs they were saved with (see notebooks/execute.py).
nb_execution_mode = "off"

# API reference: Google-style docstrings; type hints in the parameter list
# rather than in an unreadably long signature.
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"  # Returns: says it
# Show the library's type aliases by name instead of their expanded unions.
autodoc_type_aliases = {
  name: name
  for name in (
    "optax.ScalarOrSchedule",
    "optax.Schedule",
    "optax.Params",
    "optax.Updates",
    "optax.OptState",
  )
}
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = "sphinx_book_theme"
html_title = f"rmsprop_jax {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
  "home_page_in_toc": True,
  "show_toc_level": 2,
  "navigation_with_keys": False,
  # Search lives in the sidebar; without this the theme adds a second search
  # field in a header bar of its own.
  "navbar_persistent": [],
  "footer_content_items": ["copyright.html"],
}
html_last_updated_fmt = None
pygments_style = "default"


def _copy_notebooks() -> None:
  """Mirrors ``../notebooks/*.ipynb`` into ``docs/notebooks/``.

  Sphinx reads sources only inside ``docs/``, so the notebooks are copied in
  (unchanged files are left alone, so an incremental build stays incremental)
  and copies of notebooks that no longer exist are removed.
  """
  src, dst = ROOT / "notebooks", DOCS / "notebooks"
  dst.mkdir(exist_ok=True)
  names = set()
  for nb in sorted(src.glob("*.ipynb")):
    names.add(nb.name)
    copy = dst / nb.name
    if not copy.exists() or copy.read_bytes() != nb.read_bytes():
      shutil.copy2(nb, copy)
  for copy in dst.glob("*.ipynb"):
    if copy.name not in names:
      copy.unlink()


def _check_api_coverage(app: Sphinx, env: Any) -> None:
  """Warns (an error under -W) for a public name the API reference misses."""
  documented = set(env.domains["py"].objects)
  modules = ["rmsprop_jax"]
  if importlib.util.find_spec("rmsprop_jax.recipes") is not None:
    modules.append("rmsprop_jax.recipes")
  for name in modules:
    module = importlib.import_module(name)
    for attr in getattr(module, "__all__", []):
      if f"{name}.{attr}" not in documented:
        logging.getLogger(__name__).warning(
          f"{name}.{attr} is in {name}.__all__ but not in the API reference: "
          "add it to docs/api.md (docs/api_recipes.md documents recipes.__all__)."
        )


def setup(app: Sphinx) -> None:
  _copy_notebooks()
  app.connect("env-check-consistency", _check_api_coverage)
