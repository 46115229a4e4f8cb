"""The README's promises: its two commands and its core code examples run."""

from __future__ import annotations

import pathlib
import re
from typing import Any

README = (pathlib.Path(__file__).parents[1] / "README.md").read_text()


def _section(title: str) -> str:
  match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.M | re.S)
  assert match, f"README has no section {title!r}"
  return match.group(1)


def _python_blocks(text: str) -> list[str]:
  return re.findall(r"```python\n(.*?)```", text, re.S)


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
  (quick_start,) = _python_blocks(_section("Quick start"))
  setup, loop = quick_start.split("for step in", 1)
  ns: dict[str, Any] = {}
  exec(compile(setup, "README:quick-start", "exec"), ns)
  initial = float(ns["loss_fn"](ns["params"], ns["x"], ns["y"]))
  exec(compile("for step in" + loop, "README:quick-start", "exec"), ns)
  assert float(ns["loss"]) < 0.01 * initial
  for block in _python_blocks(_section("Composing with optax")):
    exec(compile(block, "README:composing", "exec"), ns)
  state = ns["opt"].init(ns["params"])
  updates, _ = ns["opt"].update(ns["params"], state, ns["params"])
  assert set(updates) == set(ns["params"])
