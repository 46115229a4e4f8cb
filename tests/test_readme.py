"""The README's promises: its two commands and its core code examples run."""

from __future__ import annotations

import pathlib
import re

import numpy as np

from tests import _docs

README_PATH = pathlib.Path(__file__).parents[1] / "README.md"
README = README_PATH.read_text()


def test_readme_opens_with_the_demo_and_test_commands():
  head = README[: README.index("## ")]
  commands = re.findall(r"```bash\n(.*?)\n```", head, re.S)
  assert commands[0] == 'pip install ".[demo]" && python -m rmsprop_jax.demo'
  assert commands[1].startswith('pip install ".[test]" && python -m pytest')
  ci = (pathlib.Path(__file__).parents[1] / ".ci" / "run").read_text()
  assert "<!-- test-command -->" in README and "test-command" in ci


def test_readme_is_short_and_names_the_docs_build_command():
  assert README.count("\n") <= 300
  block = re.search(r"<!-- docs-command -->\n```bash\n(.*?)\n```", README, re.S)
  assert block, "README has no docs-command block"
  assert block.group(1) == (
    'pip install ".[docs]" && sphinx-build -W -b html docs docs/_build/html'
  )
  ci = (pathlib.Path(__file__).parents[1] / ".ci" / "run").read_text()
  assert "readme_command docs-command" in ci


def test_readme_links_point_at_files_that_exist():
  root = pathlib.Path(__file__).parents[1]
  targets = re.findall(r"\]\(((?!https?://|#)[^)\s]+)\)", README)
  assert targets
  for target in targets:
    assert (root / target.split("#")[0]).exists(), target


def test_quick_start_and_composition_examples_run_and_train():
  # The blocks run as pasted in tests/test_docs.py; here, what they computed.
  run = _docs.run_page(README_PATH).check()
  printed = run.stdout("def train_step(params, opt_state, x, y):")
  first_loss = float(re.match(r"step\s+0\s+loss (\S+)", printed).group(1))
  assert float(run.after("def train_step")["loss"]) < 0.01 * first_loss
  composed = run.after("optax.apply_if_finite(opt, max_consecutive_errors=5)")
  updates, params = composed["updates"], run.after("def loss_fn")["params"]
  assert set(updates) == set(params)
  # The schedule warms up from 0, so the first update is zero, and finite.
  assert all(np.isfinite(u).all() for u in updates.values())
