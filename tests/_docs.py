"""Runs the Python blocks of README.md and docs/*.md as a reader pastes them.

The one place that reads a page's code. A page runs alone, in a fresh
interpreter: a subprocess per page (``python -m tests._docs PAGE RESULT``), in
an empty temporary folder, with the page's blocks executed in order in one
``__main__`` namespace, as if pasted into ``python`` one after the other.
Nothing is imported before the page's own first line, so a page that sets
``XLA_FLAGS`` or ``KERAS_BACKEND`` before importing JAX or Keras gets what a
reader gets, and no page sees another page's names or JAX configuration.

What a page's Markdown means to the runner:

- A ```` ```python ```` block is code that runs. Every other way of writing
  Python (```` ```{code-block} python ````, ```` ```py ````, ``>>>``
  listings) is refused, so that no example escapes the runner.
- ``<!-- requires: torch -->`` on the line right before a python block: the
  block runs only where every module named (comma-separated) can be imported,
  and is skipped with that reason elsewhere. A name may carry a minimum
  version, ``<!-- requires: flax>=0.11 -->``, compared with the installed
  distribution's version. A block that runs must not read a name that only
  skipped blocks define: :func:`undefined_names` finds such a name from the
  code alone, on every machine, with or without the optional library.
- A ```` ```text ```` block right after a python block (nothing but blank
  lines between them) is what that block prints, and must equal it (trailing
  spaces and blank lines at the end aside). A python block that prints must be
  followed by such a block: output shown on a page is output the code prints,
  and output the code prints is shown.
- ``<!-- output: rtol=1e-3 -->`` on the line right before that text block:
  its numbers are compared to a relative tolerance (the rest of the text
  exactly), for output that depends on the machine. The page must say so.
- A warning that escapes a block (one the page does not catch itself) fails
  the page when it is raised from the page's own code or from ``rmsprop_jax``:
  a reader would see it on their terminal.

:func:`run_page` returns what each block did (:class:`BlockRun`) and the
values of the names the page defines, converted to NumPy and pickled where
that is possible (arrays, numbers, containers, optax and rmsprop_jax states),
so that a test can assert on what the page computed: :attr:`PageRun.names`
after the last block, :meth:`PageRun.after` after a given block.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import dataclasses
import functools
import importlib.metadata
import importlib.util
import io
import linecache
import os
import pathlib
import pickle
import re
import sys
import tempfile
import time
import traceback
import types
import warnings
from typing import Any

from tests import _process

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Every page a reader can paste from: the README and the documentation site.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT_S = 600

_FENCE = re.compile(r"^( *)(`{3,})(.*)$")
_MARKER = re.compile(r"^ *<!--\s*(requires|output)\s*:\s*(.*?)\s*-->\s*$")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
# Values pickled back to the test process come only from these modules, so that
# nothing defined on the page itself (a class, a function) has to be unpickled
# outside it. Larger values are left out.
_PICKLABLE = ("builtins", "numpy", "ml_dtypes", "jax", "jaxlib", "optax", "rmsprop_jax")
_PICKLABLE += ("collections", "copyreg", "_codecs")
_MAX_PICKLE_BYTES = 1 << 20
# Settings of the test process that a reader's fresh interpreter does not have.
_RESET_ENV = ("XLA_FLAGS", "JAX_ENABLE_X64", "KERAS_BACKEND", "PYTEST_CURRENT_TEST")


@dataclasses.dataclass(frozen=True)
class Block:
  """A fenced block of a page.

  Attributes:
    info: what follows the opening fence (``python``, ``text``, ``{table} ...``).
    code: the block's text, ending with a newline.
    line: the page's line number of the block's first line of text (1-based).
    markers: the ``<!-- requires: ... -->`` or ``<!-- output: ... -->`` marker
      on the line right before the opening fence, as ``{kind: value}``.
    follows_block: whether only blank lines separate the block from the one
      before it.
  """

  info: str
  code: str
  line: int
  markers: dict[str, str]
  follows_block: bool


def relative(page: pathlib.Path) -> str:
  """The page's path from the repository root, as tracebacks show it."""
  page = page.resolve()
  return page.relative_to(ROOT).as_posix() if page.is_relative_to(ROOT) else page.name


def blocks(page: pathlib.Path) -> list[Block]:
  """Every fenced block of ``page``, in order."""
  lines = page.read_text().splitlines()
  out: list[Block] = []
  i, last_end = 0, None  # last_end: the line index of the previous closing fence
  while i < len(lines):
    match = _FENCE.match(lines[i])
    if not match:
      i += 1
      continue
    indent, fence, info = len(match.group(1)), match.group(2), match.group(3).strip()
    start = i + 1
    end = start
    while end < len(lines) and lines[end].strip() != fence:
      end += 1
    marker = _MARKER.match(lines[i - 1]) if i > 0 else None
    markers = {marker.group(1): marker.group(2)} if marker else {}
    # A block inside a list item is indented with the item's text.
    code = "".join(line[indent:] + "\n" for line in lines[start:end])
    between = None if last_end is None else lines[last_end + 1 : i - 1 if marker else i]
    follows = between is not None and all(not line.strip() for line in between)
    out.append(Block(info, code, start + 1, markers, follows))
    last_end = end
    i = end + 1
  return out


def python_blocks(page: pathlib.Path) -> list[Block]:
  """The blocks of ``page`` that the runner executes, in order."""
  return [b for b in blocks(page) if b.info == "python"]


def shown_output(page: pathlib.Path) -> dict[int, Block]:
  """Each python block's shown output: ``{index in python_blocks: text block}``."""
  out: dict[int, Block] = {}
  all_blocks = blocks(page)
  index = -1
  for before, block in zip([None, *all_blocks], all_blocks, strict=False):
    if block.info == "python":
      index += 1
    elif (
      block.info == "text"
      and before is not None
      and before.info == "python"
      and block.follows_block
    ):
      out[index] = block
  return out


# ----------------------------------------------------------------- requirements


def requirements(block: Block) -> list[tuple[str, str | None]]:
  """The ``(module, minimum version or None)`` pairs a block requires."""
  spec = block.markers.get("requires", "")
  out = []
  for item in filter(None, (s.strip() for s in spec.split(","))):
    name, _, minimum = item.partition(">=")
    out.append((name.strip(), minimum.strip() or None))
  return out


def _leading_numbers(version: str) -> tuple[int, ...]:
  parts = []
  for part in version.split("."):
    digits = re.match(r"\d+", part)
    if not digits:
      break
    parts.append(int(digits.group()))
  return tuple(parts)


def missing_requirement(block: Block) -> str | None:
  """Why ``block`` cannot run here (a missing module, an older version), or None.

  Looks the modules up without importing them, so that checking a block's
  requirements imports nothing before the page does.
  """
  for name, minimum in requirements(block):
    top = name.split(".")[0]
    if importlib.util.find_spec(top) is None or (
      top != name and importlib.util.find_spec(name) is None
    ):
      return f"requires {name}, which is not installed"
    if minimum is not None:
      dists = importlib.metadata.packages_distributions().get(top, [top])
      version = importlib.metadata.version(dists[0])
      if _leading_numbers(version) < _leading_numbers(minimum):
        return f"requires {name}>={minimum}; {version} is installed"
  return None


# -------------------------------------------------------------- static names


def _bound_by(node: ast.AST) -> list[str]:
  """The names one syntax node binds (an import, a def, a target, an argument)."""
  if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
    return [node.name]
  if isinstance(node, (ast.Import, ast.ImportFrom)):
    return [alias.asname or alias.name.split(".")[0] for alias in node.names]
  if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
    return [node.id]
  if isinstance(node, ast.arg):
    return [node.arg]
  if isinstance(node, ast.ExceptHandler) and node.name:
    return [node.name]
  return []


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def _bound_and_read(code: str) -> tuple[set[str], set[str], set[str]]:
  """Names a block binds at its top level, binds anywhere, and reads anywhere.

  Binding anywhere (inside a function too) counts as defining the name for
  that block: an over-approximation that keeps a function's own locals from
  being reported, at the cost of missing a local that shadows a global.
  """
  tree = ast.parse(code)
  top: set[str] = set()
  pending = list(ast.iter_child_nodes(tree))
  while pending:
    node = pending.pop()
    top.update(_bound_by(node))
    if not isinstance(node, _SCOPES):
      pending.extend(ast.iter_child_nodes(node))
  anywhere = {name for node in ast.walk(tree) for name in _bound_by(node)}
  read = {
    node.id
    for node in ast.walk(tree)
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
  }
  return top, anywhere, read


def bound_names(code: str) -> set[str]:
  """The names a block binds at its top level (assignments, imports, defs)."""
  return _bound_and_read(code)[0]


def undefined_names(page: pathlib.Path, available: set[str] | None = None) -> list[str]:
  """Names the page's blocks read before any block that runs defines them.

  Args:
    page: the Markdown page.
    available: the modules to treat as installed for ``requires`` markers;
      ``None`` treats every required module as missing, the strictest case
      (every block that runs must do without the skipped ones).

  Returns:
    One message per name, naming the block's line and the name, and saying
    when only a skipped block defines it.
  """
  defined = set(dir(builtins)) | {"__name__", "__file__"}
  skipped_defines: dict[str, int] = {}
  problems = []
  for block in python_blocks(page):
    top, anywhere, read = _bound_and_read(block.code)
    required = {name for name, _ in requirements(block)}
    runs = not required or (available is not None and required <= available)
    if not runs:
      for name in top:
        skipped_defines.setdefault(name, block.line)
      continue
    for name in sorted(read - anywhere - defined):
      where = f"{relative(page)}:{block.line}"
      if name in skipped_defines:
        problems.append(
          f"{where}: {name!r} is defined only by the block at line "
          f"{skipped_defines[name]}, which is skipped where its requirement "
          "is missing: mark this block with the same requirement, or define "
          f"{name!r} here"
        )
      else:
        problems.append(f"{where}: {name!r} is used but no earlier block defines it")
    defined |= top
  return problems


# -------------------------------------------------------------- comparing output


def compare_output(printed: str, shown: Block) -> str | None:
  """Why ``printed`` is not the output ``shown`` on the page, or None."""
  want = [line.rstrip() for line in shown.code.rstrip().splitlines()]
  got = [line.rstrip() for line in printed.rstrip().splitlines()]
  rule = shown.markers.get("output", "")
  if not rule:
    if got == want:
      return None
    return "\n".join(["the page shows:", *want, "", "the block prints:", *got])
  match = re.fullmatch(r"rtol=([0-9.eE+-]+)", rule)
  if not match:
    return f"unknown output marker {rule!r}: the runner knows 'rtol=<number>'"
  rtol = float(match.group(1))
  if len(got) == len(want) and all(
    _close(g, w, rtol) for g, w in zip(got, want, strict=True)
  ):
    return None
  return "\n".join(
    [
      f"the page shows (numbers to rtol={rtol:g}):",
      *want,
      "",
      "the block prints:",
      *got,
    ]
  )


def _close(got: str, want: str, rtol: float) -> bool:
  if _NUMBER.sub("#", got) != _NUMBER.sub("#", want):
    return False
  pairs = zip(_NUMBER.findall(got), _NUMBER.findall(want), strict=True)
  return all(abs(float(g) - float(w)) <= rtol * abs(float(w)) for g, w in pairs)


# ---------------------------------------------------------------- running a page


@dataclasses.dataclass
class BlockRun:
  """What one python block did.

  Attributes:
    line: the page's line of the block's first line.
    status: ``"ok"``, ``"skipped"``, ``"failed"`` or ``"not run"`` (after a
      failure).
    stdout: what the block printed.
    reason: why it was skipped.
    error: the traceback, when it failed.
    warnings: the warnings that escaped the block, as ``file:line: Category:
      message``, those raised from the page's code or rmsprop_jax only.
    seconds: its wall time.
    names: pickled values of the names it binds, as they were after it ran.
  """

  line: int
  status: str
  stdout: str = ""
  reason: str = ""
  error: str = ""
  warnings: list[str] = dataclasses.field(default_factory=list)
  seconds: float = 0.0
  names: dict[str, bytes] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PageRun:
  """The result of running a page: one :class:`BlockRun` per python block."""

  page: pathlib.Path
  blocks: list[BlockRun]
  final_names: dict[str, bytes]
  seconds: float
  stderr: str

  def check(self) -> PageRun:
    """Fails with the traceback unless every block ran or was skipped."""
    failed = [b for b in self.blocks if b.status not in ("ok", "skipped")]
    assert not failed, f"{relative(self.page)}:{failed[0].line}:\n{failed[0].error}"
    return self

  @property
  def names(self) -> dict[str, Any]:
    """The page's names after its last block (those that could be pickled)."""
    return _unpickle(self.final_names)

  def block(self, snippet: str) -> BlockRun:
    """What the one python block containing ``snippet`` did."""
    code = [b.code for b in python_blocks(self.page)]
    found = [i for i, c in enumerate(code) if snippet in c]
    assert len(found) == 1, f"{len(found)} blocks of {self.page.name} hold {snippet!r}"
    return self.blocks[found[0]]

  def after(self, snippet: str) -> dict[str, Any]:
    """The names bound by the one python block containing ``snippet``."""
    return _unpickle(self.block(snippet).names)

  def stdout(self, snippet: str) -> str:
    """What the one python block containing ``snippet`` printed."""
    return self.block(snippet).stdout


def _unpickle(pickled: dict[str, bytes]) -> dict[str, Any]:
  out = {}
  for name, data in pickled.items():
    with contextlib.suppress(Exception):
      out[name] = pickle.loads(data)
  return out


@functools.cache
def run_page(page: pathlib.Path) -> PageRun:
  """Runs ``page``'s python blocks in a fresh interpreter (once per session)."""
  page = page.resolve()
  env = {k: v for k, v in os.environ.items() if k not in _RESET_ENV}
  env["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
  )
  with tempfile.TemporaryDirectory(prefix="page-") as folder:
    result = pathlib.Path(folder) / ".result.pickle"
    start = time.perf_counter()
    done = _process.python(
      "-m",
      "tests._docs",
      str(page),
      str(result),
      cwd=folder,
      env=env,
      timeout=TIMEOUT_S,
    )
    seconds = time.perf_counter() - start
    if not result.exists():
      raise AssertionError(
        f"the runner of {relative(page)} exited with {done.returncode}:\n"
        f"{done.stderr[-4000:]}"
      )
    data = pickle.loads(result.read_bytes())
  runs = [BlockRun(**b) for b in data["blocks"]]
  return PageRun(page, runs, data["names"], seconds, done.stderr)


# ----------------------------------------------------- inside the page's process


def _allowed_module(obj: Any) -> bool:
  if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
    module = getattr(obj, "__module__", None) or ""
  else:
    module = type(obj).__module__
  return module.split(".")[0] in _PICKLABLE


class _Pickler(pickle.Pickler):
  """Pickles only objects whose classes the test process can import."""

  def reducer_override(self, obj: Any) -> Any:
    if not _allowed_module(obj):
      raise pickle.PicklingError(f"{type(obj).__module__}.{type(obj).__name__}")
    return NotImplemented


def _to_numpy(value: Any) -> Any:
  jax = sys.modules.get("jax")
  if jax is None:
    return value
  import numpy as np

  def convert(leaf: Any) -> Any:
    if isinstance(leaf, jax.Array):
      with contextlib.suppress(Exception):
        return np.asarray(leaf)
    return leaf

  with contextlib.suppress(Exception):
    return jax.tree.map(convert, value)
  return value


def _pickled(namespace: dict[str, Any], names: set[str]) -> dict[str, bytes]:
  out = {}
  for name in sorted(names):
    if name.startswith("_") or name not in namespace:
      continue
    buffer = io.BytesIO()
    try:
      _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(
        _to_numpy(namespace[name])
      )
    except Exception:
      continue
    if buffer.tell() <= _MAX_PICKLE_BYTES:
      out[name] = buffer.getvalue()
  return out


def _escaped(caught: list[warnings.WarningMessage], page_file: str) -> list[str]:
  package = str(ROOT / "rmsprop_jax")
  return [
    f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}"
    for w in caught
    if w.filename == page_file or w.filename.startswith(package)
  ]


def _run_block(block: Block, page_file: str, namespace: dict[str, Any]) -> BlockRun:
  run = BlockRun(line=block.line, status="ok")
  # Padding puts the block's lines at their line numbers on the page, so a
  # traceback points at the page.
  source = "\n" * (block.line - 1) + block.code
  stdout = io.StringIO()
  start = time.perf_counter()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
      with contextlib.redirect_stdout(stdout):
        exec(compile(source, page_file, "exec"), namespace)
    except BaseException as e:
      run.status = "failed"
      # From the page's frame on: the runner's own frame says nothing.
      page_frames = e.__traceback__.tb_next if e.__traceback__ else None
      run.error = "".join(traceback.format_exception(type(e), e, page_frames))
  run.seconds = time.perf_counter() - start
  run.stdout = stdout.getvalue()
  run.warnings = _escaped(caught, page_file)
  run.names = _pickled(namespace, bound_names(block.code))
  return run


def _main(page: pathlib.Path, result: pathlib.Path) -> None:
  page_file = relative(page)
  lines = page.read_text().splitlines(keepends=True)
  linecache.cache[page_file] = (len(lines), None, lines, page_file)
  main = types.ModuleType("__main__")
  main.__dict__["__builtins__"] = builtins
  sys.modules["__main__"] = main
  sys.path[0] = ""  # as in an interactive interpreter: the current folder
  runs: list[dict[str, Any]] = []
  failed = False
  for block in python_blocks(page):
    reason = missing_requirement(block)
    if failed or reason:
      status = "not run" if failed else "skipped"
      runs.append(dataclasses.asdict(BlockRun(block.line, status, reason=reason or "")))
      continue
    run = _run_block(block, page_file, main.__dict__)
    failed = run.status == "failed"
    runs.append(dataclasses.asdict(run))
  names = _pickled(main.__dict__, set(main.__dict__))
  result.write_bytes(pickle.dumps({"blocks": runs, "names": names}))


if __name__ == "__main__":
  _main(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))
