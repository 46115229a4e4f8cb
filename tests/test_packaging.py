"""The release artifacts: an sdist and a wheel that install and work on their own.

The wheel is built from this checkout, checked by ``twine check --strict``,
inspected for what it holds, and installed into a fresh virtual environment
whose only view of the dependencies (JAX, optax, ...) is this environment's
site-packages, appended after its own. A smoke check then runs outside the
source tree, so a module or data file missing from the wheel fails here.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest

import rmsprop_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: pathlib.Path = ROOT) -> str:
  proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("dist")
  # Without --sdist/--wheel, build makes the sdist and then the wheel *from the
  # sdist*: what a user installs from the index, untouched by stale build/ files.
  _run(sys.executable, "-m", "build", "--outdir", str(out))
  return out


def _one(dist: pathlib.Path, pattern: str) -> pathlib.Path:
  (path,) = dist.glob(pattern)
  return path


def test_sdist_and_wheel_pass_twine_check_strict(dist: pathlib.Path) -> None:
  files = [_one(dist, "*.whl"), _one(dist, "*.tar.gz")]
  _run(sys.executable, "-m", "twine", "check", "--strict", *map(str, files))
  version = rmsprop_jax.__version__
  assert files[0].name.startswith(f"rmsprop_jax-{version}-py3-none-any")


def test_wheel_holds_the_package_and_py_typed_only(dist: pathlib.Path) -> None:
  names = zipfile.ZipFile(_one(dist, "*.whl")).namelist()
  top = {n.split("/")[0] for n in names}
  assert top == {"rmsprop_jax", f"rmsprop_jax-{rmsprop_jax.__version__}.dist-info"}
  package = {n for n in names if n.startswith("rmsprop_jax/")}
  on_disk = {
    p.relative_to(ROOT).as_posix()
    for p in (ROOT / "rmsprop_jax").rglob("*")
    if p.suffix == ".py" or p.name == "py.typed"
  }
  assert package == on_disk
  for excluded in ("tests", "benchmarks", "notebooks", "docs", "examples"):
    assert not any(n.startswith(f"{excluded}/") for n in names), excluded


def test_wheel_metadata_names_the_dependency_floors(dist: pathlib.Path) -> None:
  wheel = zipfile.ZipFile(_one(dist, "*.whl"))
  meta = wheel.read(f"rmsprop_jax-{rmsprop_jax.__version__}.dist-info/METADATA")
  requires = re.findall(r"^Requires-Dist: ([^;\n]+)$", meta.decode(), re.M)
  for name in ("jax", "jaxlib", "optax", "numpy"):
    assert any(re.fullmatch(rf"{name}\s*>=\s*[\d.]+", r) for r in requires), requires


SMOKE = textwrap.dedent(
  """
  import pathlib, sys
  import jax, jax.numpy as jnp, optax
  import rmsprop_jax
  from rmsprop_jax import recipes

  package = pathlib.Path(rmsprop_jax.__file__).parent
  assert pathlib.Path(sys.prefix) in package.parents, package
  assert (package / "py.typed").is_file()
  params = {"w": jnp.ones((64, 64)), "b": jnp.zeros(3)}
  grads = jax.tree.map(lambda p: p + 0.5, params)
  for opt in (
    rmsprop_jax.rmsprop(0.1, momentum=0.9, centered=True),
    rmsprop_jax.torch_rmsprop(0.01, weight_decay=0.1),
    rmsprop_jax.keras_rmsprop(weight_decay=0.1),
    rmsprop_jax.tf1_rmsprop(0.1),
    rmsprop_jax.timm_rmsprop_tf(caution=True, momentum=0.9),
    rmsprop_jax.tf_keras_legacy_rmsprop(),
    rmsprop_jax.rmsprop(0.1, state_dtype=jnp.float8_e4m3fn),
    recipes.dqn_nature(),
  ):
    state = opt.init(params)
    updates, state = jax.jit(opt.update)(grads, state, params)
    assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates))
  theirs = optax.rmsprop(0.1, momentum=0.9)
  state = rmsprop_jax.from_optax(theirs.init(params))
  assert isinstance(state, rmsprop_jax.RMSPropState)
  print("ok", rmsprop_jax.__version__)
  """
)


def test_wheel_installs_into_a_fresh_venv_and_works_outside_the_tree(
  dist: pathlib.Path, tmp_path: pathlib.Path
) -> None:
  venv = tmp_path / "venv"
  _run(sys.executable, "-m", "venv", "--without-pip", str(venv))
  python = str(venv / "bin" / "python")
  wheel = str(_one(dist, "*.whl"))
  _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", wheel)
  # The dependencies come from this environment, after the venv's own packages
  # (added once the wheel is in, so that pip does not see this one's copy).
  site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  pathlib.Path(site.strip(), "dependencies.pth").write_text(
    sysconfig.get_paths()["purelib"] + "\n"
  )
  out = _run(python, "-c", SMOKE, cwd=tmp_path)
  assert out.split() == ["ok", rmsprop_jax.__version__]
