"""Every page runs as pasted, shows what it prints, and quotes facts from their source.

The pages are README.md and every ``docs/*.md``, found by glob: a new page is
covered without a line here. :mod:`tests._docs` runs each page's python blocks
in a fresh interpreter; this module checks what they did, and then the facts
the pages quote from elsewhere: counts of recordings and notebooks, the options
of ``rmsprop_jax.rmsprop``, the demo's output, the benchmark figures (from the
JSON file each page names) and the error messages of ``docs/errors.md``.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import functools
import inspect
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmsprop_jax
from tests import _bench, _docs
from tests.reference import loader

ROOT = _docs.ROOT
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RUNNABLE = [page for page in _docs.PAGES if _docs.python_blocks(page)]
OPTIONAL = [
  (page, block)
  for page in _docs.PAGES
  for block in _docs.python_blocks(page)
  if block.markers.get("requires")
]


def _id(page: pathlib.Path) -> str:
  return _docs.relative(page)


# ------------------------------------------------------------- pages as pasted


def test_the_runner_covers_the_readme_and_every_docs_page():
  assert set(_docs.PAGES) == {README, *DOCS.glob("*.md")}
  assert README in RUNNABLE and len(RUNNABLE) >= 14


@pytest.mark.parametrize("page", RUNNABLE, ids=_id)
def test_page_runs_as_pasted_and_shows_what_it_prints(page: pathlib.Path) -> None:
  run = _docs.run_page(page)
  shown = _docs.shown_output(page)
  problems = []
  for index, block in enumerate(run.blocks):
    where = f"{_docs.relative(page)}:{block.line}"
    if block.status == "skipped":
      continue
    if block.status != "ok":
      problems.append(f"{where} {block.status}:\n{block.error}")
      continue
    problems += [f"{where} warns: {w}" for w in block.warnings]
    if index in shown:
      mismatch = _docs.compare_output(block.stdout, shown[index])
      if mismatch:
        problems.append(f"{where} shows other output than it prints:\n{mismatch}")
    elif block.stdout.strip():
      problems.append(
        f"{where} prints, but no ```text block after it shows what:\n{block.stdout}"
      )
  assert not problems, "\n\n".join(problems) + f"\n\nstderr:\n{run.stderr[-3000:]}"


@pytest.mark.parametrize(
  ("page", "block"),
  OPTIONAL,
  ids=[f"{_id(p)}:{b.line}" for p, b in OPTIONAL],
)
def test_block_that_needs_an_optional_library_runs_where_it_is_installed(
  page: pathlib.Path, block: _docs.Block
) -> None:
  reason = _docs.missing_requirement(block)
  if reason:
    pytest.skip(f"{_docs.relative(page)}:{block.line} {reason}")
  (run,) = [b for b in _docs.run_page(page).blocks if b.line == block.line]
  assert run.status == "ok", run.error


@pytest.mark.parametrize("page", RUNNABLE, ids=_id)
def test_blocks_define_every_name_they_use(page: pathlib.Path) -> None:
  # Where no optional library is installed, and where all of them are.
  required = {name for _, b in OPTIONAL for name, _ in _docs.requirements(b)}
  assert _docs.undefined_names(page) == []
  assert _docs.undefined_names(page, available=required) == []


@pytest.mark.parametrize("page", _docs.PAGES, ids=_id)
def test_python_code_is_written_only_in_python_blocks(page: pathlib.Path) -> None:
  for block in _docs.blocks(page):
    where = f"{_docs.relative(page)}:{block.line}"
    assert (
      not re.search(r"\bpy(thon3?|con)?\b", block.info) or block.info == "python"
    ), f"{where}: ```{block.info} is not run; write ```python"
    assert not re.search(r"^>>> ", block.code, re.M), f"{where}: a >>> listing"
    if "requires" in block.markers:
      assert block.info == "python", f"{where}: requires marks a python block"
    if "output" in block.markers:
      assert block.info == "text", f"{where}: an output marker needs a text block"


# ----------------------------------------------------------- the runner itself


def _page(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
  page = tmp_path / "page.md"
  page.write_text(text)
  return page


def test_runner_compares_printed_output_exactly_or_to_the_stated_tolerance(
  tmp_path: pathlib.Path,
) -> None:
  page = _page(
    tmp_path,
    "```python\nprint(1)\n```\n\n```text\n1.0\n```\n\n"
    "```python\nprint(1)\n```\n\n<!-- output: rtol=0.1 -->\n```text\n1.05\n```\n",
  )
  shown = _docs.shown_output(page)
  assert _docs.compare_output("1\n", shown[0])  # exact: 1 is not 1.0
  assert _docs.compare_output("1\n", shown[1]) is None
  assert _docs.compare_output("2\n", shown[1])
  assert _docs.compare_output("x 1\n", shown[1])  # the words must match


def test_runner_finds_a_name_only_a_skipped_block_defines(tmp_path: pathlib.Path):
  page = _page(
    tmp_path,
    "<!-- requires: torch -->\n```python\nimport torch\nmodel = 1\n```\n\n"
    "```python\nprint(model, undefined)\n```\n",
  )
  strict = _docs.undefined_names(page)
  assert len(strict) == 2 and "only by the block at line 3" in strict[0]
  assert len(_docs.undefined_names(page, available={"torch"})) == 1


def test_runner_runs_a_page_alone_and_reports_its_failures(tmp_path: pathlib.Path):
  first = _page(tmp_path, "```python\nimport os\nshared = 1\n```\n")
  second = tmp_path / "second.md"
  second.write_text(
    "```python\nimport warnings\nprint('shared' in dir())\n"
    "warnings.warn('shown')\n```\n\n```python\n1 / 0\n```\n\n```python\nx = 1\n```\n"
  )
  assert _docs.run_page(first).names["shared"] == 1
  run = _docs.run_page(second)
  assert [b.status for b in run.blocks] == ["ok", "failed", "not run"]
  assert run.blocks[0].stdout == "False\n"
  assert run.blocks[0].warnings and "shown" in run.blocks[0].warnings[0]
  assert 'File "second.md", line 8' in run.blocks[1].error  # the page's own line
  assert "_docs.py" not in run.blocks[1].error


# --------------------------------------------------------------------- the demo


def _demo_tables(text: str) -> tuple[str, dict[str, list[str]]]:
  """The loss table (from "Training loss") and the summary rows by optimizer."""
  losses = text[text.index("Training loss") :].split("\n\n")[0]
  rows = re.findall(r"^\| (rmsprop|sgd|adam) \| (.*) \|$", text, re.M)
  return losses, {name: cells.split(" | ") for name, cells in rows}


def test_demo_output_on_the_pages_is_what_the_demo_prints(
  tmp_path: pathlib.Path,
) -> None:
  # The pages show one run with the JAX they name; another JAX release compiles
  # other arithmetic (jax 0.5.3 moves the losses by up to 31 %).
  (named,) = set(re.findall(r"VM \(.*?jax (\d+\.\d+\.\d+)\)", README.read_text()))
  if jax.__version__ != named:
    pytest.skip(
      f"the pages show a run with jax {named}; {jax.__version__} is installed"
    )
  done = subprocess.run(
    [sys.executable, "-m", "rmsprop_jax.demo", "--out", str(tmp_path)],
    cwd=tmp_path,
    env={**os.environ, "PYTHONPATH": str(ROOT)},
    capture_output=True,
    text=True,
    timeout=300,
    check=True,
  )
  printed_losses, printed_rows = _demo_tables(done.stdout)
  for page in (README, DOCS / "getting_started.md"):
    (shown,) = [
      b for b in _docs.blocks(page) if b.info == "text" and "Training loss" in b.code
    ]
    assert shown.markers == {"output": "rtol=0.2"}, "the page states 20 %"
    mismatch = _docs.compare_output(printed_losses, shown)
    assert mismatch is None, f"{_docs.relative(page)}:\n{mismatch}"
    _, rows = _demo_tables(page.read_text())
    assert rows.keys() == printed_rows.keys()
    for name, cells in rows.items():
      got = printed_rows[name]
      # first and final loss as the loss table; test accuracy to half a point;
      # the compile and train seconds are timings, which the pages say vary.
      np.testing.assert_allclose(
        [float(c) for c in cells[:2]], [float(c) for c in got[:2]], rtol=0.2
      )
      assert abs(float(cells[2][:-1]) - float(got[2][:-1])) <= 0.5, (page, name)


# ---------------------------------------------------- counts and the options


def test_recorded_case_counts_and_versions_are_those_of_the_recordings():
  cases = len(loader.load_cases())
  tables = sum(len(loader.load_embedding_cases(n)) for n in loader.EMBEDDING_LIBRARIES)
  readme = " ".join(README.read_text().split())
  assert f"{cases} recorded trajectories" in readme
  assert f"and {tables} more of TF's sparse updates of an embedding table" in readme
  porting = " ".join((DOCS / "porting.md").read_text().split())
  assert f"{cases} cases covering every argument" in porting
  assert f"{tables} more of an embedding table" in porting
  versions = {lib: loader.load_file(lib)["versions"] for lib in loader.LIBRARIES}
  quoted = (
    f"torch {versions['torch']['torch'].split('+')[0]}, "
    f"Keras {versions['keras']['keras']} on JAX, TensorFlow and tf_keras "
    f"{versions['tf_keras']['tf_keras']}, timm {versions['timm']['timm']}"
  )
  assert quoted in porting


NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve"


def test_notebook_count_and_list_are_those_of_the_notebooks_folder():
  notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
  word = NUMBER_WORDS.split()[len(notebooks)]
  text = " ".join((DOCS / "getting_started.md").read_text().split())
  assert f"{word.capitalize()} executed notebooks" in text
  listed = re.findall(
    r"\{doc\}`[^`<]*<notebooks/(\w+)>`", (DOCS / "notebooks.md").read_text()
  )
  assert listed == notebooks


def _defaults_quoted(text: str) -> dict[str, Any]:
  return {
    name: ast.literal_eval(value)
    for name, value in re.findall(r"`(\w+)=([^`,]+)`", text)
    if name in inspect.signature(rmsprop_jax.rmsprop).parameters
  }


@pytest.mark.parametrize("page", [README, DOCS / "options.md"], ids=_id)
def test_every_option_is_in_the_options_table_with_its_default(page: pathlib.Path):
  text = page.read_text()
  if page == README:
    text = text[text.index("## Options") : text.index("## Composing")]
  signature = inspect.signature(rmsprop_jax.rmsprop).parameters
  quoted = _defaults_quoted(text)
  for name, parameter in signature.items():
    if parameter.default is inspect.Parameter.empty:
      assert f"`{name}`" in text, name
    else:
      assert name in quoted, f"{_docs.relative(page)} lacks `{name}=...`"
      assert quoted[name] == parameter.default, name


def test_scale_by_rms_signature_on_the_options_page_is_the_real_one():
  names = list(inspect.signature(rmsprop_jax.scale_by_rms).parameters)
  written = (
    f"`rmsprop_jax.scale_by_rms({', '.join(names[:2])}, *, {', '.join(names[2:])})`"
  )
  assert written in " ".join((DOCS / "options.md").read_text().split())


# --------------------------------------------------------- benchmark figures


def _named_json(page: pathlib.Path, kind: str) -> dict[str, Any]:
  """The ``benchmarks/results/<kind>-*.json`` that the page names (only one)."""
  return _bench.stored_result(page, kind)[1]


Figure = Callable[[dict[str, Any]], str]


def _at(*path: str | int, fmt: str = "") -> Figure:
  """The value at ``path`` in the JSON, formatted."""

  def figure(result: dict[str, Any]) -> str:
    for key in path:
      result = result[key]
    return format(result, fmt)

  return figure


def _span(section: str, key: str, fmt: str, **where: Any) -> Figure:
  """``low–high`` of ``key`` over the rows of ``section`` matching ``where``."""

  def figure(result: dict[str, Any]) -> str:
    rows = [r for r in result[section] if all(r[k] in v for k, v in where.items())]
    values = [r[key] for r in rows]
    assert values, (section, key, where)
    return f"{min(values):{fmt}}–{max(values):{fmt}}"

  return figure


def _state_bytes(variant: str, dtype: str) -> Figure:
  def figure(result: dict[str, Any]) -> str:
    (row,) = [
      r
      for r in result["memory"]["state"]
      if (r["lib"], r["variant"], r["state_dtype"]) == ("rmsprop_jax", variant, dtype)
    ]
    return f"{row['bytes_per_param']:.0f}"

  return figure


def _eight_bit_bytes(result: dict[str, Any]) -> str:
  (row,) = [r for r in result["memory"] if r["state_dtype"] == "float8_e4m3fn"]
  return f"{row['plain']:.2f}"


def _temp_bytes(result: dict[str, Any]) -> str:
  temps = {
    s[lib]["temp_bytes"]
    for s in result["memory"]["step"]
    for lib in ("rmsprop_jax", "optax")
  }
  assert len(temps) == 1, temps
  return str(temps.pop())


def _eager_vs_jitted(result: dict[str, Any]) -> str:
  (eager,) = [
    r for r in result["eager"] if (r["tree"], r["variant"]) == ("ResNet-50", "plain")
  ]
  (jitted,) = [
    r for r in result["jitted"] if (r["tree"], r["variant"]) == ("ResNet-50", "plain")
  ]
  return f"{eager['optax_ms']:.0f} ms, about {eager['optax_ms'] / jitted['rmsprop_jax_ms']:.0f}x"


def _jitted_ms(tree: str, variant: str) -> Figure:
  def figure(result: dict[str, Any]) -> str:
    (row,) = [
      r for r in result["jitted"] if (r["tree"], r["variant"]) == (tree, variant)
    ]
    return f"{row['rmsprop_jax_ms']:.0f}"

  return figure


def _leaves_and_params(tree: str) -> Figure:
  def figure(result: dict[str, Any]) -> str:
    row = next(r for r in result["jitted"] if r["tree"] == tree)
    return f"{row['leaves']} leaves, {row['params'] / 1e6:.1f}M parameters"

  return figure


SMALL = ["100 x (64,64)"]
WB = ["100 x (w (64,64), b (64,))"]
LARGE = ["ResNet-50", "GPT-2-style"]
ALL_LIBS = ["plain", "momentum"]

# Every figure the README and the performance page quote from a benchmark run:
# the page, the JSON it names ("run" = benchmarks/results/run-*.json, "low-memory"
# = benchmarks/results/low-memory-*.json), the words on the page with {} for
# each figure, and where in that JSON each figure comes from. The tables of the
# performance page are checked whole (test_performance_tables_are_those_of_the_run).
RUN_FIGURES: list[tuple[pathlib.Path, str, str, list[Figure]]] = [
  (
    README,
    "run",
    "(jax {}, optax {}, {} GB/s measured copy bandwidth)",
    [
      _at("machine", "jax"),
      _at("machine", "optax"),
      _at("machine", "bandwidth", "copy", "gbps", fmt=".0f"),
    ],
  ),
  (
    README,
    "run",
    "| {}× optax's time, {} % of the copy bandwidth |",
    [
      _span("jitted", "vs_optax", ".2f"),
      lambda r: _span("jitted", "rmsprop_jax_of_bandwidth", ".0%")(r).replace("%", ""),
    ],
  ),
  (
    README,
    "run",
    "GPT-2-style (memory-bound) | {}× faster than optax |",
    [
      _span("eager", "speedup", ".1f", tree=LARGE),
    ],
  ),
  (
    README,
    "run",
    "| {}× optax's |",
    [_span("compile", "cpu_vs_optax", ".2f")],
  ),
  (
    README,
    "run",
    "eager `update`, 100 leaves of (64, 64) and 100 × (w, b) | {}× JAX's own dispatch floor, {}×",
    [
      _span("eager", "vs_floor", ".2f", tree=SMALL + WB),
      _span("eager", "speedup", ".1f", tree=SMALL + WB),
    ],
  ),
  (
    README,
    "run",
    "| {} bytes (one array), {} with bfloat16,",
    [
      _state_bytes("plain", "float32"),
      _state_bytes("plain", "bfloat16"),
    ],
  ),
  (
    README,
    "low-memory",
    "with bfloat16, {} with 8-bit |",
    [
      _eight_bit_bytes,
    ],
  ),
  (
    DOCS / "getting_started.md",
    "run",
    "that is {} times faster than `optax.rmsprop`'s eager update",
    [
      _span("eager", "speedup", ".1f", tree=SMALL + WB),
    ],
  ),
  (
    DOCS / "getting_started.md",
    "run",
    "where memory bandwidth dominates, {} times;",
    [
      _span("eager", "speedup", ".1f", tree=LARGE),
    ],
  ),
  (
    DOCS / "performance.md",
    "run",
    "(rmsprop_jax {}, jax and jaxlib {}, optax {})",
    [
      _at("machine", "rmsprop_jax"),
      _at("machine", "jax"),
      _at("machine", "optax"),
    ],
  ),
  (
    DOCS / "performance.md",
    "run",
    '**{}-core Intel Xeon** virtual machine (`lscpu`: "{}"), measured copy bandwidth {} GB/s',
    [
      _at("machine", "cores"),
      _at("machine", "cpu"),
      _at("machine", "bandwidth", "copy", "gbps", fmt=".0f"),
    ],
  ),
  (
    DOCS / "performance.md",
    "run",
    "ResNet-50 ({}: HWIO conv kernels",
    [_leaves_and_params("ResNet-50")],
  ),
  (
    DOCS / "performance.md",
    "run",
    "a GPT-2-style decoder ({}: 12 blocks",
    [_leaves_and_params("GPT-2-style")],
  ),
  (
    DOCS / "performance.md",
    "run",
    "take the same time ({}x); both stay {} % above the",
    [
      _span("jitted", "vs_optax", ".2f"),
      lambda r: "–".join(
        f"{100 * (float(x) - 1):.0f}"
        for x in _span("jitted", "vs_floor", ".2f")(r).split("–")
      ),
    ],
  ),
  (
    DOCS / "performance.md",
    "run",
    "| jitted train step ≤ 1.05x optax | **PASS** ({}x) |",
    [
      _span("jitted", "vs_optax", ".2f"),
    ],
  ),
  (
    DOCS / "performance.md",
    "run",
    "**MISS** ({}x); optax misses it by the same margin",
    [
      _span("jitted", "vs_floor", ".2f"),
    ],
  ),
  (
    DOCS / "performance.md",
    "run",
    "**PASS** for small leaves ({}x); **MISS** on ResNet-50 and the GPT-2-style tree ({}x)",
    [
      _span("eager", "speedup", ".1f", tree=SMALL + WB),
      _span("eager", "speedup", ".1f", tree=LARGE),
    ],
  ),
  (
    DOCS / "performance.md",
    "run",
    "compile time ≤ 1.05x optax's | **PASS** ({}x) |",
    [_span("compile", "cpu_vs_optax", ".2f")],
  ),
  (
    DOCS / "performance.md",
    "run",
    "plain and momentum | **PASS** ({}x) |",
    [_span("eager", "vs_floor", ".2f", tree=SMALL + WB, variant=ALL_LIBS)],
  ),
  (
    DOCS / "performance.md",
    "run",
    "costs what JAX's own dispatch costs ({}x the floor;",
    [_span("eager", "vs_floor", ".2f", tree=SMALL + WB)],
  ),
  (
    DOCS / "performance.md",
    "run",
    "**PASS** ({} and {} bytes per parameter, nothing else)",
    [
      _state_bytes("plain", "float32"),
      _state_bytes("plain", "bfloat16"),
    ],
  ),
  (
    DOCS / "performance.md",
    "run",
    "**PASS** ({} temporary bytes, as optax)",
    [_temp_bytes],
  ),
  (
    DOCS / "performance.md",
    "run",
    "allocates {} temporary bytes, as does optax's",
    [_temp_bytes],
  ),
  (
    DOCS / "performance.md",
    "run",
    "parameter for plain RMSProp — {} bytes per parameter",
    [
      _state_bytes("plain", "float32"),
    ],
  ),
  (
    DOCS / "performance.md",
    "run",
    "— and {} bytes with momentum or centring",
    [
      _state_bytes("momentum", "float32"),
    ],
  ),
  (
    DOCS / "performance.md",
    "run",
    "halves it ({} and {} bytes;",
    [
      _state_bytes("plain", "bfloat16"),
      _state_bytes("momentum", "bfloat16"),
    ],
  ),
  (
    DOCS / "performance.md",
    "run",
    "## Why eager stops at {}x on large trees",
    [
      _span("eager", "speedup", ".0f", tree=LARGE),
    ],
  ),
  (
    DOCS / "performance.md",
    "run",
    "on ResNet-50 (plain) {} the jitted train step of either library ({} ms)",
    [
      _eager_vs_jitted,
      _jitted_ms("ResNet-50", "plain"),
    ],
  ),
]


@pytest.mark.parametrize(
  ("page", "kind", "words", "figures"),
  RUN_FIGURES,
  ids=[f"{_id(p)}:{w[:40]}" for p, _, w, _ in RUN_FIGURES],
)
def test_quoted_benchmark_figure_is_that_of_the_json_the_page_names(
  page: pathlib.Path, kind: str, words: str, figures: list[Figure]
) -> None:
  result = _named_json(page, kind)
  quoted = words.format(*(figure(result) for figure in figures))
  text = " ".join(page.read_text().split())
  assert quoted in text, f"{_docs.relative(page)} should say: {quoted}"


def test_performance_tables_are_those_of_the_run():
  page = DOCS / "performance.md"
  result = _named_json(page, "run")
  fmt_ms = _bench.module("common").fmt_ms
  rows = [
    f"| {r['tree']} | {r['variant']} | {fmt_ms(r['rmsprop_jax_ms'])} | "
    f"{fmt_ms(r['optax_ms'])} | {fmt_ms(r['floor_ms'])} | {r['vs_optax']:.2f}x | "
    f"{r['vs_floor']:.2f}x | {r['rmsprop_jax_gbps']:.1f} | "
    f"{100 * r['rmsprop_jax_of_bandwidth']:.0f} % |"
    for r in result["jitted"]
  ]
  rows += [
    f"| {r['tree']} | {r['variant']} | {fmt_ms(r['rmsprop_jax_ms'])} | "
    f"{fmt_ms(r['floor_ms'])} | {r['vs_floor']:.2f}x | "
    f"{r['overhead_us_per_leaf']:.1f} | {fmt_ms(r['optax_ms'])} | {r['speedup']:.1f}x |"
    for r in result["eager"]
  ]
  compile_rows: dict[int, list[str]] = {}
  for r in result["compile"]:
    compile_rows.setdefault(r["leaves"], []).append(
      f"{fmt_ms(r['rmsprop_jax_cpu_ms'])} vs {fmt_ms(r['optax_cpu_ms'])} "
      f"({r['cpu_vs_optax']:.2f}x)"
    )
  rows += [
    f"| {n} | {' | '.join(cells + [''] * (3 - len(cells)))} |"
    for n, cells in compile_rows.items()
  ]
  text = " ".join(page.read_text().split())
  missing = [row for row in rows if " ".join(row.split()) not in text]
  assert not missing, "docs/performance.md lacks the rows\n" + "\n".join(missing)


# ------------------------------------------------------------ docs/errors.md

PARAMS = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
TORCH_GROUP = {
  "params": [0],
  "lr": 1e-2,
  "alpha": 0.99,
  "eps": 1e-8,
  "weight_decay": 0.0,
  "momentum": 0.0,
  "centered": False,
}


def _update(opt: optax.GradientTransformation, grads: Any = PARAMS, **kw: Any) -> Any:
  return opt.update(grads, opt.init(PARAMS), PARAMS, **kw)


def _injected(**kwargs: Any) -> Callable[[], Any]:
  def provoke() -> Any:
    opt = optax.inject_hyperparams(rmsprop_jax.rmsprop)(**kwargs)
    return jax.jit(opt.update)(PARAMS, opt.init(PARAMS), PARAMS)

  return provoke


@contextlib.contextmanager
def _keras_optimizer(built: bool = True, **kwargs: Any) -> Iterator[Any]:
  """A Keras 3 RMSprop (JAX backend) on a (3, 2) kernel and a bias."""
  os.environ.setdefault("KERAS_BACKEND", "jax")
  keras = pytest.importorskip("keras")
  # Keras' own code relies on JAX's standard dtype promotion.
  with jax.numpy_dtype_promotion("standard"):
    optimizer = keras.optimizers.RMSprop(**kwargs)
    if built:
      optimizer.build(
        [
          keras.Variable(np.ones((3, 2), "float32")),
          keras.Variable(np.zeros(2, "float32")),
        ]
      )
    yield optimizer


def _from_keras(
  params: list[Any], built: bool = True, optimizer: Any = None, **kwargs: Any
) -> Callable[[], Any]:
  def provoke() -> Any:
    with _keras_optimizer(built, **kwargs) as keras_optimizer:
      return rmsprop_jax.from_keras(optimizer or keras_optimizer, params)

  return provoke


def _to_keras(state: Any, **kwargs: Any) -> Callable[[], Any]:
  def provoke() -> Any:
    with _keras_optimizer(momentum=0.9) as optimizer:
      return rmsprop_jax.to_keras(state, optimizer, **kwargs)

  return provoke


def _lazy_rows_on_eight_bit_state_of_another_optimizer() -> Any:
  table = {"t": jnp.ones(8192)}
  state = rmsprop_jax.rmsprop(1e-3, state_dtype=jnp.float8_e4m3fn).init(table)
  opt = rmsprop_jax.rmsprop(1e-3, state_dtype=jnp.float8_e4m3fn, lazy_rows=True)
  return opt.update(table, state, table)


QUANTIZED = rmsprop_jax.rmsprop(1e-3, state_dtype=jnp.float8_e4m3fn).init(
  {"w": jnp.ones((64, 256))}
)
PLAIN_STATE = rmsprop_jax.rmsprop(1e-3).init(PARAMS)
KERAS_PARAMS = [jnp.ones((3, 2)), jnp.zeros(2)]


def _step(grads: Any = PARAMS, state: Any = None, **kwargs: Any) -> Callable[[], Any]:
  """One update of ``rmsprop(**kwargs)`` (a fresh state unless ``state``)."""

  def provoke() -> Any:
    opt = rmsprop_jax.rmsprop(**kwargs)
    return opt.update(grads, opt.init(PARAMS) if state is None else state, PARAMS)

  return provoke


def _torch_state_dict(
  groups: list[dict[str, Any]], state: Any = None
) -> dict[str, Any]:
  return {"state": state or {}, "param_groups": groups}


_build = functools.partial(functools.partial, rmsprop_jax.rmsprop)
_from_torch = functools.partial(functools.partial, rmsprop_jax.from_torch)
_to_optax = functools.partial(functools.partial, rmsprop_jax.to_optax)
WRONG_SHAPE = {"w": jnp.ones((4, 3)), "b": jnp.zeros(4)}
INT_GRADS = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4, jnp.int32)}
ADAM_STATE = optax.adam(1e-3).init(PARAMS)
ONE = [jnp.ones(3)]

# What provokes each row of docs/errors.md, keyed by the message as the page
# writes it. A row without an entry here, or an entry whose message no longer
# opens as written, fails test_every_error_row_is_provoked.
PROVOKE: dict[str, Callable[[], Any]] = {
  # Building the optimizer.
  "ValueError: learning_rate must satisfy learning_rate >= 0": _build(-1.0),
  "ValueError: learning_rate must be a non-negative number or an optax schedule; "
  "got learning_rate=None": _build(None),
  "ValueError: decay must satisfy 0 <= decay < 1": _build(1e-3, decay=1.0),
  "ValueError: eps must satisfy eps >= 0": _build(1e-3, eps=-1.0),
  "ValueError: momentum must satisfy 0 <= momentum < 1, or None": _build(
    1e-3, momentum=1.5
  ),
  "ValueError: nesterov=True needs momentum": _build(1e-3, nesterov=True),
  "ValueError: learning_rate must be a scalar": _build(jnp.ones(3)),
  "TypeError: learning_rate must be a real number": _build("0.1"),
  "TypeError: decay must be a real number (0 <= decay < 1); got None": _build(
    1e-3, decay=None
  ),
  "TypeError: centered must be True or False": _injected(
    learning_rate=1e-3, centered=jnp.array(True)
  ),
  "ValueError: state_dtype must be None or a floating dtype": _build(
    1e-3, state_dtype=jnp.int8
  ),
  "TypeError: state_dtype must be a dtype such as jnp.bfloat16; got an array": (
    _injected(learning_rate=1e-3, state_dtype=jnp.bfloat16)
  ),
  "TypeError: rmsprop() takes from 1 to 3 positional arguments but 4 were given": (
    _build(1e-3, 0.9, 1e-8, 0.0)
  ),
  "UserWarning: centered=True with state_dtype=bfloat16 ...": _build(
    1e-3, centered=True, state_dtype=jnp.bfloat16
  ),
  # init and update.
  "TypeError: params['layer']['count'] has dtype int32": functools.partial(
    rmsprop_jax.rmsprop(1e-3).init, {"layer": {"count": jnp.int32(0)}}
  ),
  "TypeError: updates['b'] has dtype int32": _step(INT_GRADS, learning_rate=1e-3),
  "ValueError: learning_rate must be a real scalar, but the learning-rate "
  "schedule's value has shape (3,)": _step(learning_rate=lambda k: jnp.full(3, 1e-3)),
  "TypeError: learning_rate must be a real scalar, but the learning-rate "
  "schedule's value is None": _step(learning_rate=lambda k: None),
  "ValueError: state.nu does not have the structure of updates": _step(
    {"w": PARAMS["w"]}, PLAIN_STATE, learning_rate=1e-3
  ),
  "ValueError: Shape mismatch at updates['w']: updates has shape (4, 3) but "
  "state.nu has shape (3, 4)": _step(WRONG_SHAPE, PLAIN_STATE, learning_rate=1e-3),
  "ValueError: state.mu is None but centered is enabled": _step(
    state=PLAIN_STATE, learning_rate=1e-3, centered=True
  ),
  "ValueError: weight_decay is enabled, so update needs params": functools.partial(
    rmsprop_jax.rmsprop(1e-3, weight_decay=1e-4).update, PARAMS, PLAIN_STATE
  ),
  "TypeError: state must be the RMSPropState returned by init": _step(
    state=ADAM_STATE, learning_rate=1e-3
  ),
  "ValueError: weight_decay_mask must be a pytree of bools with the structure of "
  "params": _step(learning_rate=1e-3, weight_decay=1e-4, weight_decay_mask={"x": True}),
  "TypeError: weight_decay_mask['w'] must be a Python bool": _step(
    learning_rate=1e-3,
    weight_decay=1e-4,
    weight_decay_mask={"w": jnp.array(True), "b": False},
  ),
  "ValueError: lazy_rows marks a 1-D leaf of shape (8192,) whose state is "
  "block-quantized": _lazy_rows_on_eight_bit_state_of_another_optimizer,
  "UserWarning: Low-precision params: params['w'] (bfloat16) round every "
  "update": functools.partial(
    rmsprop_jax.rmsprop(1e-3).init, {"w": jnp.ones(3, jnp.bfloat16)}
  ),
  # Moving a run between libraries.
  "TypeError: state_dict must be torch_optimizer.state_dict()": _from_torch([], ONE),
  "ValueError: param_groups[0] has no ['alpha', 'eps', 'weight_decay']": _from_torch(
    _torch_state_dict([{"params": [0], "lr": 1e-3, "betas": (0.9, 0.999)}]), ONE
  ),
  "ValueError: the state_dict's param_groups hold 2 parameters but params has 1 "
  "leaves": _from_torch(_torch_state_dict([{**TORCH_GROUP, "params": [0, 1]}]), ONE),
  "ValueError: state[0] has no ['square_avg']": _from_torch(
    _torch_state_dict([TORCH_GROUP], {0: {"step": 1.0}}), ONE
  ),
  "TypeError: params[0] is complex (complex64)": _from_torch(
    _torch_state_dict([TORCH_GROUP]), [jnp.ones(3, jnp.complex64)]
  ),
  "ValueError: state.count is None ... but PyTorch stores the number of steps "
  "taken": functools.partial(rmsprop_jax.to_torch, PLAIN_STATE),
  "TypeError: state must be an RMSPropState (the state of torch_rmsprop)": (
    functools.partial(rmsprop_jax.to_torch, ADAM_STATE, step=1)
  ),
  "TypeError: state.nu is block-quantized (float8_e4m3fn state)": functools.partial(
    rmsprop_jax.to_torch, QUANTIZED, step=1
  ),
  "TypeError: from_keras takes a keras.optimizers.RMSprop (Keras 3)": _from_keras(
    KERAS_PARAMS, optimizer=object()
  ),
  "ValueError: the optimizer is not built": _from_keras(KERAS_PARAMS, built=False),
  "ValueError: params[0] has shape (2, 3) but the optimizer's variable 0": (
    _from_keras([jnp.ones((2, 3)), jnp.zeros(2)])
  ),
  "ValueError: the optimizer has use_ema=True": _from_keras(KERAS_PARAMS, use_ema=True),
  "ValueError: state.count is None ... but Keras stores the number of steps "
  "taken": _to_keras(rmsprop_jax.rmsprop(1e-3, momentum=0.9).init(KERAS_PARAMS)),
  "TypeError: to_keras takes an RMSPropState": _to_keras({"nu": 1}, iterations=3),
  "TypeError: optax_state must be the state of optax.rmsprop": functools.partial(
    rmsprop_jax.from_optax, ADAM_STATE
  ),
  "ValueError: template is centred (ScaleByRStdDevState) but state.mu is None": (
    _to_optax(PLAIN_STATE, optax.rmsprop(1e-3, centered=True).init(PARAMS))
  ),
  "TypeError: state must be an RMSPropState (the state of rmsprop_jax.rmsprop; "
  "the arguments are to_optax(state, template))": _to_optax(
    {"a": 1}, optax.rmsprop(1e-3).init(PARAMS)
  ),
}


def _error_rows() -> list[str]:
  page = (DOCS / "errors.md").read_text()
  return re.findall(r"^\| `((?:\w+Error|\w*Warning): [^`]+)` \|", page, re.M)


def test_every_error_row_has_a_case_and_every_case_a_row():
  rows = _error_rows()
  assert len(rows) == len(set(rows)) >= 40
  assert set(rows) == set(PROVOKE)


@pytest.mark.parametrize("row", _error_rows())
def test_every_error_row_is_provoked(row: str) -> None:
  name, message = row.split(": ", 1)
  # "..." on the page stands for the part of the message that names the value.
  pattern = ".*?".join(re.escape(part.strip()) for part in message.split("..."))
  category = getattr(builtins, name)
  if issubclass(category, Warning):
    with pytest.warns(category, match=f"^{pattern}"):
      PROVOKE[row]()
  else:
    with pytest.raises(category) as caught:
      PROVOKE[row]()
    assert re.match(pattern, str(caught.value), re.S), (
      f"the page shows\n  {message}\nbut the message is\n  {caught.value}"
    )


# What the page lists as not checked is indeed let through, as it says.


def test_a_schedules_negative_value_is_used_as_it_is():
  (updates, _), (ascent, _) = (
    _update(rmsprop_jax.rmsprop(lr)) for lr in (1e-3, lambda k: jnp.float32(-1e-3))
  )
  np.testing.assert_array_equal(ascent["w"], -updates["w"])


def test_a_traced_learning_rate_is_not_range_checked():
  update = jax.jit(lambda lr: _update(rmsprop_jax.rmsprop(lr))[0])
  assert float(update(-1e-3)["w"][0, 0]) == -float(update(1e-3)["w"][0, 0]) > 0


def test_non_finite_gradients_propagate_into_the_update():
  grads = {"w": jnp.full((3, 4), jnp.nan), "b": jnp.zeros(4)}
  updates, _ = _update(rmsprop_jax.rmsprop(1e-3), grads)
  assert bool(jnp.isnan(updates["w"]).all()) and bool(jnp.isfinite(updates["b"]).all())


def test_injected_callable_mask_returning_a_bool_masks_every_leaf():
  def mask(params: Any) -> Any:
    return jax.tree.map(lambda x: x.ndim > 1, params)

  injected = optax.inject_hyperparams(rmsprop_jax.rmsprop)(
    learning_rate=1e-2,
    weight_decay=0.5,
    decoupled_weight_decay=True,
    weight_decay_mask=mask,
  )
  got, _ = injected.update(PARAMS, injected.init(PARAMS), PARAMS)
  # optax called the mask with the scalar step count, so it returned False,
  # which masks out every leaf: the matrix the mask meant to decay does not.
  kept = {"learning_rate": 1e-2, "weight_decay": 0.5, "decoupled_weight_decay": True}
  (none, _), (meant, _) = (
    _update(rmsprop_jax.rmsprop(**kept, weight_decay_mask=m)) for m in (False, mask)
  )
  np.testing.assert_allclose(got["w"], none["w"], rtol=1e-6)
  assert not np.allclose(got["w"], meant["w"], rtol=1e-3)


def test_low_memory_tables_are_those_of_the_run():
  page = DOCS / "low_memory.md"
  result = _named_json(page, "low-memory")
  text = " ".join(page.read_text().split())
  names = {"float32": "`None` (float32)", "bfloat16": "`jnp.bfloat16`"}
  memory = {r["state_dtype"]: r for r in result["memory"]}
  rows = [
    f"| {names[d]} | {memory[d]['plain']:.2f} | {memory[d]['momentum_centered']:.1f} |"
    for d in names
  ]
  e4, e5 = memory["float8_e4m3fn"], memory["float8_e5m2"]
  assert (e4["plain"], e4["momentum_centered"]) == (
    e5["plain"],
    e5["momentum_centered"],
  )
  rows.append(
    "| `jnp.float8_e4m3fn` / `jnp.float8_e5m2` | "
    f"**{e4['plain']:.3f}** | {e4['momentum_centered']:.2f} |"
  )
  for task in result["parity"].values():
    finals = {d: [seed[-1] for seed in r["losses"]] for d, r in task["dtypes"].items()}
    for dtype, losses in finals.items():
      worst = max(
        abs(a / b - 1) for a, b in zip(losses, finals["float32"], strict=True)
      )
      name = "MLP classifier" if task["name"].startswith("MLP") else "Transformer LM"
      cell = "—" if dtype == "float32" else f"{100 * worst:.2f} %"
      rows.append(
        f"| {name} | {dtype} | {', '.join(f'{x:.4f}' for x in losses)} | {cell} |"
      )
  for dtype, r in result["speed"].items():
    ratios = r["vs_float32"]
    vs = (
      "1"
      if dtype == "float32"
      else " / ".join(f"{ratios[k]:.2f}×" for k in ("min", "median", "cpu"))
    )
    rows.append(
      f"| {dtype} | {r['min_ms']:.1f} / {r['median_ms']:.1f} / {r['cpu_ms']:.1f} | {vs} |"
    )
  for row in rows:
    assert row in text, f"docs/low_memory.md should have the row: {row}"
