"""TF's recordings against the float64 NumPy reference, without the package.

The embedding files (``tests/reference/embedding_*.json``) record TF1's and the
legacy tf_keras optimizer on a table whose gradient reaches them as
``tf.IndexedSlices``: TF's sparse kernels update only the looked-up rows and
leave every other row, its accumulators and its momentum buffer as they were.
The reference's ``lazy_rows`` rule (rows of zero gradient sit the step out)
must reproduce them, float64 within 1e-9 and float32 within 1e-5 of each leaf's
scale, and the dense rule must not. TF1's recordings, those with an L2 term in
the loss among them, replay through the reference's coupled weight decay.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests import numpy_reference as ref
from tests.reference import loader

TOLERANCE = loader.TOLERANCE  # float64 1e-9, float32 1e-5 of each leaf's scale
EMBEDDING = loader.load_embedding_cases()
TF1 = loader.load_cases("tf1")
Rows = dict[str, np.ndarray]


def configs(case: loader.Case, rule: str = "library") -> dict[str, ref.Config]:
  """The reference configured as the library ran, per leaf.

  ``rule`` is ``"library"`` (lazy rows where TF's sparse kernels ran: TF1,
  and the legacy optimizer with momentum), ``"lazy"`` (lazy rows on every
  sparse leaf) or ``"dense"`` (no lazy rows). The learning rate of each step
  is the one the library recorded.
  """
  kw, held = case.kwargs, case.float32_hyperparameters or {}
  rounded = case.hyperparameter_dtype == "float32"  # TF1 given Python floats
  number = (lambda x: float(np.float32(x))) if rounded else float
  if case.library == "tf1":
    base = ref.Config(
      decay=number(kw.get("decay", 0.9)),
      eps=number(kw.get("epsilon", 1e-10)),
      initial_scale=1.0,
      momentum=number(kw.get("momentum", 0.0)),
      weight_decay=kw.get("weight_decay", 0.0),  # the loss's, never rounded
    )
    sparse_kernels = True
  else:  # tf_keras_legacy: two kernels, chosen by momentum
    momentum = held.get("momentum", kw.get("momentum", 0.0))
    base = ref.Config(
      decay=held.get("rho", kw.get("rho", 0.9)),
      eps=kw.get("epsilon", 1e-7),
      eps_in_sqrt=momentum > 0,
      momentum=momentum or None,
    )
    # Without momentum the legacy optimizer's sparse path decays the whole
    # rms (and mg) slot and updates the looked-up rows: the dense rule.
    sparse_kernels = momentum > 0
  base = dataclasses.replace(
    base,
    learning_rate=lambda k: float(case.lrs[k]),
    centered=kw.get("centered", False),
  )
  lazy = {"library": sparse_kernels, "lazy": True, "dense": False}[rule]
  mask, sparse = case.weight_decay_mask or {}, case.lazy_rows or {}
  return {
    leaf: dataclasses.replace(
      base, mask=mask.get(leaf, True), lazy_rows=lazy and sparse.get(leaf, False)
    )
    for leaf in case.params
  }


def replay(case: loader.Case, config: dict[str, ref.Config]) -> Rows:
  """The recorded gradients through the reference, from the recorded start."""
  params = {leaf: p[0].astype(np.float64) for leaf, p in case.params.items()}
  states = {leaf: ref.init(p, config[leaf]) for leaf, p in params.items()}
  rows = [params]
  for k in range(case.steps):
    params = dict(params)
    for leaf, p in params.items():
      u, states[leaf] = ref.step(case.grads[leaf][k], p, states[leaf], config[leaf])
      params[leaf] = p + u
    rows.append(params)
  return {leaf: np.stack([r[leaf] for r in rows]) for leaf in case.params}


def float64(cases: list[loader.Case]) -> list[loader.Case]:
  return [c for c in cases if c.dtype == "float64"]


# ------------------------------------------------------- embedding, lazy rows


@pytest.mark.parametrize("case", EMBEDDING, ids=lambda c: c.id)
def test_reference_reproduces_embedding_recording(case: loader.Case) -> None:
  loader.assert_trajectory_close(replay(case, configs(case)), case.params, case.dtype)


def sparse_kernels(case: loader.Case) -> bool:
  return case.library == "tf1" or case.kwargs.get("momentum", 0.0) > 0


@pytest.mark.parametrize(
  "case", [c for c in float64(EMBEDDING) if sparse_kernels(c)], ids=lambda c: c.id
)
def test_dense_rule_misses_sparse_kernel_recording(case: loader.Case) -> None:
  dense = replay(case, configs(case, "dense"))
  assert loader.deviation(dense, case.params) > 100 * TOLERANCE[case.dtype]


@pytest.mark.parametrize(
  "case", [c for c in float64(EMBEDDING) if not sparse_kernels(c)], ids=lambda c: c.id
)
def test_lazy_rule_misses_legacy_recording_without_momentum(
  case: loader.Case,
) -> None:
  lazy = replay(case, configs(case, "lazy"))
  assert loader.deviation(lazy, case.params) > 100 * TOLERANCE[case.dtype]


@pytest.mark.parametrize("library", loader.EMBEDDING_LIBRARIES)
def test_rows_with_a_gradient_are_the_looked_up_rows(library: str) -> None:
  # A looked-up row whose summed gradient is exactly zero still takes TF's
  # sparse update (accumulators decay, momentum moves it), which no rule on
  # the dense gradient can tell from an untouched row: the files have none.
  indices = loader.load_embedding_file(library)["indices"]
  for case in loader.load_embedding_cases(library):
    assert case.lazy_rows == {"table": True, "dense": False}
    for k, looked_up in enumerate(indices):
      moving = np.flatnonzero(np.any(case.grads["table"][k] != 0, axis=1))
      assert set(moving.tolist()) == set(looked_up), (case.id, k)
  assert any(len(set(step)) < len(step) for step in indices)  # a duplicate


# ---------------------------------------------------------------- TF1, L2 term


@pytest.mark.parametrize("case", TF1, ids=lambda c: c.id)
def test_reference_reproduces_tf1_recording(case: loader.Case) -> None:
  loader.assert_trajectory_close(replay(case, configs(case)), case.params, case.dtype)


L2 = [c for c in float64(TF1) if c.kwargs.get("weight_decay")]


@pytest.mark.parametrize("case", L2, ids=lambda c: c.id)
def test_tf1_recording_holds_its_l2_term(case: loader.Case) -> None:
  no_l2 = {
    leaf: dataclasses.replace(c, weight_decay=0.0) for leaf, c in configs(case).items()
  }
  assert (
    loader.deviation(replay(case, no_l2), case.params) > 100 * TOLERANCE[case.dtype]
  )
  if case.weight_decay_mask is not None:
    every_leaf = {
      leaf: dataclasses.replace(c, mask=True) for leaf, c in configs(case).items()
    }
    assert (
      loader.deviation(replay(case, every_leaf), case.params)
      > 100 * TOLERANCE["float64"]
    )


def test_tf1_l2_recordings_cover_mask_momentum_centering_schedule() -> None:
  l2 = [c for c in TF1 if c.kwargs.get("weight_decay")]
  assert {c.dtype for c in l2} == {"float64", "float32"}
  assert any(c.weight_decay_mask for c in l2)
  assert any(c.kwargs.get("momentum") for c in l2)
  assert any(c.kwargs.get("centered") for c in l2)
  assert any(c.schedule for c in l2)
