"""Tests of the demo module, ``python -m rmsprop_jax.demo``."""

from __future__ import annotations

import io
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rmsprop_jax import demo

STEPS = 300  # enough for RMSProp to make clear progress, few enough to be quick


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, pathlib.Path]:
  """Runs the demo once for the module: (exit code, stdout, output folder)."""
  out = tmp_path_factory.mktemp("demo")
  buf = io.StringIO()
  stdout, sys.stdout = sys.stdout, buf
  try:
    code = demo.main(["--steps", str(STEPS), "--out", str(out), "--seed", "0"])
  finally:
    sys.stdout = stdout
  return code, buf.getvalue(), out


def _summary_row(text: str, name: str) -> dict[str, float]:
  """Parses one optimizer's row of the printed Markdown summary table."""
  match = re.search(
    rf"^\| {name} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)% \|", text, re.MULTILINE
  )
  assert match, f"no summary row for {name} in:\n{text}"
  first, final, acc = (float(g) for g in match.groups())
  return {"first": first, "final": final, "accuracy": acc / 100}


def _numpy_initial_loss(seed: int) -> float:
  """Cross-entropy of the untrained MLP, recomputed in float64 NumPy."""
  x, y = demo.make_spirals(1000, seed=seed)
  import jax

  params = {
    k: np.asarray(v, np.float64)
    for k, v in demo.init_mlp(jax.random.key(seed), [2, 64, 64, 2]).items()
  }
  h = np.tanh(x @ params["w0"] + params["b0"])
  h = np.tanh(h @ params["w1"] + params["b1"])
  logits = h @ params["w2"] + params["b2"]
  logits -= logits.max(axis=1, keepdims=True)
  log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  return float(-log_p[np.arange(len(y)), y].mean())


def test_demo_exits_successfully(demo_run):
  code, _, _ = demo_run
  assert code == 0


def test_demo_reports_the_true_initial_loss(demo_run):
  _, text, _ = demo_run
  for name in ("rmsprop", "sgd", "adam"):
    assert _summary_row(text, name)["first"] == pytest.approx(
      _numpy_initial_loss(0), abs=1e-4
    )


def test_demo_rmsprop_loss_falls_by_a_real_margin(demo_run):
  _, text, _ = demo_run
  row = _summary_row(text, "rmsprop")
  assert row["final"] < 0.75 * row["first"]


def test_demo_rmsprop_accuracy_is_above_chance(demo_run):
  _, text, _ = demo_run
  assert _summary_row(text, "rmsprop")["accuracy"] > 0.6  # chance is 0.5


def test_demo_prints_the_loss_at_intervals(demo_run):
  _, text, _ = demo_run
  table = text.split("Training loss\n", 1)[1].split("\n\n", 1)[0].splitlines()
  assert table[0].split() == ["step", "rmsprop", "sgd", "adam"]
  steps = [int(line.split()[0]) for line in table[1:]]
  assert steps[0] == 0 and steps[-1] == STEPS and len(steps) >= 4


@pytest.mark.parametrize("name", [demo.LOSS_FILE, demo.BOUNDARY_FILE])
def test_demo_saves_a_valid_png(demo_run, name):
  _, text, out = demo_run
  path = out / name
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with Image.open(path) as image:
    image.verify()  # checks the chunks' CRCs
  with Image.open(path) as image:
    assert image.format == "PNG" and min(image.size) >= 100
  assert f"saved {path}" in text


def test_make_spirals_is_balanced_and_reproducible():
  x, y = demo.make_spirals(501, seed=3)
  x2, y2 = demo.make_spirals(501, seed=3)
  assert x.shape == (501, 2) and x.dtype == np.float32 and y.dtype == np.int32
  assert np.sum(y == 0) == 250 and np.sum(y == 1) == 251
  np.testing.assert_array_equal(x, x2)
  np.testing.assert_array_equal(y, y2)
  assert not np.array_equal(x, demo.make_spirals(501, seed=4)[0])


def test_make_spirals_without_noise_lies_on_the_two_arms():
  x, y = demo.make_spirals(200, noise=0.0, turns=1.0, seed=0)
  r = np.hypot(x[:, 0], x[:, 1])
  theta = np.arctan2(x[:, 1], x[:, 0])
  # An exact point of arm c satisfies θ = 2π·r + π·c (mod 2π).
  residual = np.angle(np.exp(1j * (theta - 2 * np.pi * r - np.pi * y)))
  np.testing.assert_allclose(residual, 0.0, atol=1e-4)


def test_progress_without_a_terminal_prints_plain_lines(capsys):
  steps_iter, report = demo._progress("rmsprop", 8)
  for i in steps_iter:
    report(i, 1.0 / (i + 1))
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].split() == ["rmsprop", "step", "1/8", "loss", "1.0000"]
  assert lines[-1].split() == ["rmsprop", "step", "8/8", "loss", "0.1250"]


def test_progress_without_tqdm_prints_plain_lines(capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import now fails
  monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
  steps_iter, report = demo._progress("sgd", 4)
  for i in steps_iter:
    report(i, 0.5)
  assert "sgd  step     4/4  loss 0.5000" in capsys.readouterr().out


def test_progress_on_a_terminal_draws_a_tqdm_bar(capsys, monkeypatch):
  monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
  steps_iter, report = demo._progress("adam", 4)
  for i in steps_iter:
    report(i, 0.25)
  err = capsys.readouterr().err
  assert "adam" in err and "4/4" in err


def test_save_plots_without_matplotlib_skips_with_a_message(
  capsys, monkeypatch, tmp_path
):
  monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now fails
  assert demo.save_plots([], (), tmp_path) == []
  assert "matplotlib is not installed" in capsys.readouterr().out
  assert list(tmp_path.iterdir()) == []


def test_demo_rejects_a_non_positive_step_count(capsys):
  with pytest.raises(SystemExit):
    demo.main(["--steps", "0"])
  assert "--steps must be a positive integer; got 0" in capsys.readouterr().err


def test_demo_module_runs_as_a_script():
  proc = subprocess.run(
    [sys.executable, "-m", "rmsprop_jax.demo", "--help"],
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr
  assert "--steps" in proc.stdout and "--out" in proc.stdout


def test_default_output_folder_leaves_a_clone_clean():
  # The README's first command (pip install, then the demo from the root of
  # the clone) writes only files that git ignores.
  root = pathlib.Path(__file__).resolve().parents[1]
  out = demo.parse_args([]).out
  assert out == pathlib.Path(demo.DEFAULT_OUT)
  written = [out / demo.LOSS_FILE, out / demo.BOUNDARY_FILE, "build/lib/x.py"]
  written.append("rmsprop_jax.egg-info/PKG-INFO")
  if not (root / ".git").exists():
    pytest.skip("not a git checkout")
  proc = subprocess.run(
    ["git", "check-ignore", "--no-index", *map(str, written)],
    cwd=root,
    capture_output=True,
    text=True,
  )
  assert proc.stdout.split() == [str(p) for p in written], proc.stderr


def test_demo_prints_the_absolute_path_of_each_figure(demo_run):
  _, text, out = demo_run
  for name in (demo.LOSS_FILE, demo.BOUNDARY_FILE):
    assert f"saved {(out / name).resolve()}" in text
