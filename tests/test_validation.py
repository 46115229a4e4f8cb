"""Bad input gets a clear error naming the argument or path, the value, the rule."""

from __future__ import annotations

import re
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmsprop_jax
from tests import _compat


def _assert_refused(kwargs: dict[str, Any], message: str) -> None:
  """``rmsprop(**kwargs)``, learning rate 0.1 unless given, raises ``message``."""
  with pytest.raises(ValueError, match=re.escape(message)):
    rmsprop_jax.rmsprop(**{"learning_rate": 0.1, **kwargs})


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    (
      dict(learning_rate=-0.1),
      "learning_rate must satisfy learning_rate >= 0; got learning_rate=-0.1",
    ),
    (dict(decay=1.0), "decay must satisfy 0 <= decay < 1; got decay=1.0"),
    (dict(decay=-0.5), "decay must satisfy 0 <= decay < 1; got decay=-0.5"),
    (dict(decay=float("nan")), "decay must satisfy 0 <= decay < 1; got decay=nan"),
    (dict(eps=-1e-8), "eps must satisfy eps >= 0; got eps=-1e-08"),
    (dict(initial_scale=-1.0), "initial_scale must satisfy initial_scale >= 0"),
    (
      dict(momentum=1.0),
      "momentum must satisfy 0 <= momentum < 1, or None; got momentum=1.0",
    ),
    (dict(momentum=-0.1), "got momentum=-0.1"),
    (dict(nesterov=True), "nesterov=True needs momentum; got momentum=None"),
    (
      dict(weight_decay=-1e-4),
      "weight_decay must satisfy weight_decay >= 0; got weight_decay=-0.0001",
    ),
    (dict(state_dtype=jnp.int8), "state_dtype must be None or a floating dtype"),
    (dict(state_dtype="nonsense"), "state_dtype must be None or a floating dtype"),
    (dict(decay=jnp.asarray(2.0)), "got decay=2.0"),
    (dict(decay=np.float32(1.5)), "got decay=1.5"),
    (dict(decay=jnp.ones(2)), "decay must be a scalar"),
  ],
  ids=lambda x: x if isinstance(x, str) else None,
)
def test_bad_hyperparameters_raise_value_error(kwargs, message):
  _assert_refused(kwargs, message)


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    (dict(caution=True), "caution=True needs momentum; got momentum=None"),
    (
      dict(weight_decay=0.1, corrected_weight_decay=True),
      "corrected_weight_decay=True corrects decoupled weight decay; pass "
      "decoupled_weight_decay=True as well",
    ),
    (dict(max_lr=0.1), "max_lr is read only with corrected_weight_decay=True"),
    (
      dict(decoupled_weight_decay=True, corrected_weight_decay=True, max_lr=0.0),
      "max_lr must satisfy max_lr > 0; got max_lr=0.0",
    ),
    (
      dict(
        learning_rate=optax.constant_schedule(0.1),
        decoupled_weight_decay=True,
        corrected_weight_decay=True,
      ),
      "corrected_weight_decay=True with a learning-rate schedule needs max_lr",
    ),
  ],
  ids=lambda x: x if isinstance(x, str) else None,
)
def test_options_that_need_another_are_refused_without_it(kwargs, message):
  _assert_refused(kwargs, message)


def test_timm_corrected_weight_decay_with_a_schedule_asks_for_max_lr_by_name():
  with pytest.raises(ValueError, match=re.escape("got max_lr=None. Pass e.g.")):
    rmsprop_jax.timm_rmsprop_tf(
      optax.constant_schedule(0.1),
      weight_decay=0.1,
      decoupled_decay=True,
      corrected_weight_decay=True,
    )
  with pytest.raises(ValueError, match=re.escape("lr must satisfy lr >= 0")):
    rmsprop_jax.timm_rmsprop_tf(-0.1)


def test_non_number_hyperparameter_raises_type_error():
  with pytest.raises(TypeError, match="decay must be a real number"):
    rmsprop_jax.rmsprop(0.1, decay="0.9")


def test_scale_by_rms_validates_like_rmsprop():
  with pytest.raises(ValueError, match=re.escape("got decay=1.2")):
    rmsprop_jax.scale_by_rms(decay=1.2)
  with pytest.raises(ValueError, match="state_dtype"):
    rmsprop_jax.scale_by_rms(state_dtype=jnp.int32)


@pytest.mark.parametrize("name", ["float8_e4m3", "float8_e3m4"])
def test_float8_format_newer_than_ml_dtypes_names_the_version_it_needs(name):
  if hasattr(jnp, name):  # ml_dtypes >= 0.5: accepted, and stored block-quantized
    state = rmsprop_jax.rmsprop(0.1, state_dtype=name).init({"w": jnp.ones((64, 64))})
    assert isinstance(state.nu["w"], rmsprop_jax.QuantizedArray)
  else:
    installed = f"installed: ml_dtypes {_compat.installed('ml_dtypes')}, jax "
    with pytest.raises(ValueError, match=rf"needs ml_dtypes >= 0\.5.*{installed}"):
      rmsprop_jax.rmsprop(0.1, state_dtype=name)


def test_traced_hyperparameters_are_not_range_checked_but_used():
  # A tracer's value cannot be inspected, so its range is not checked (an
  # out-of-range value is the caller's to avoid); it is used as given.
  def f(decay):
    tx = rmsprop_jax.rmsprop(0.1, decay=decay)
    return tx.update(jnp.ones(2), tx.init(jnp.ones(2)))[0]

  g = 1.0
  for decay in (0.5, 1.5):
    nu = (1 - decay) * g**2
    want = -0.1 * g / np.sqrt(abs(nu) + 1e-8) if nu > 0 else np.nan
    np.testing.assert_allclose(jax.jit(f)(decay), [want, want], rtol=1e-6)


@pytest.mark.parametrize(
  ("preset", "name"),
  [
    (rmsprop_jax.rmsprop, "learning_rate"),
    (rmsprop_jax.torch_rmsprop, "lr"),
    (rmsprop_jax.keras_rmsprop, "learning_rate"),
    (rmsprop_jax.tf1_rmsprop, "learning_rate"),
    (rmsprop_jax.timm_rmsprop_tf, "lr"),
    (rmsprop_jax.tf_keras_legacy_rmsprop, "learning_rate"),
  ],
)
def test_a_learning_rate_of_none_is_refused_when_built(preset, name):
  with pytest.raises(ValueError, match=re.escape(f"got {name}=None")):
    preset(**{name: None})


SCHEDULE_VALUES = [
  (lambda k: jnp.ones((4, 3)) * 0.1, ValueError, "has shape (4, 3)"),
  (lambda k: jnp.ones(2) * 0.1, ValueError, "has shape (2,)"),
  (lambda k: "0.1", TypeError, "is '0.1' of type str"),
  (lambda k: None, TypeError, "is None of type NoneType"),
  (lambda k: jnp.asarray(0.1 + 0.2j), TypeError, "dtype complex64"),
]


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(
  ("schedule", "error", "message"),
  SCHEDULE_VALUES,
  ids=["(4,3)", "(2,)", "str", "None", "complex"],
)
def test_a_schedule_value_that_is_no_real_scalar_is_refused_by_name(
  schedule, error, message, jit
):
  for preset, name in (
    (rmsprop_jax.rmsprop, "learning_rate"),
    (rmsprop_jax.torch_rmsprop, "lr"),
  ):
    opt = preset(**{name: schedule})
    params = {"b": jnp.ones(3)}
    update = jax.jit(opt.update) if jit else opt.update
    with pytest.raises(
      error, match=rf"^{name} must be a real scalar, but .*" + re.escape(message)
    ):
      update(params, opt.init(params), params)


def test_an_injected_learning_rate_array_is_refused_under_jit():
  opt = optax.inject_hyperparams(rmsprop_jax.rmsprop)(learning_rate=0.1)
  params = {"b": jnp.ones(3)}
  state = opt.init(params)
  state.hyperparams["learning_rate"] = jnp.full(3, 0.1)
  with pytest.raises(
    ValueError, match=re.escape("learning_rate must be a scalar (learning_rate >= 0)")
  ):
    jax.jit(opt.update)(params, state, params)


@pytest.mark.parametrize(
  "params",
  [[1.0, 2.0], {"a": np.float32(1.5), "b": -2.0}, (np.float64(0.5),)],
  ids=["python floats", "numpy and python scalars", "numpy float64"],
)
def test_python_and_numpy_scalars_are_parameter_leaves_as_in_optax(params):
  ours, theirs = (
    rmsprop_jax.rmsprop(0.1, momentum=0.9),
    optax.rmsprop(0.1, momentum=0.9),
  )
  grads = jax.tree.map(lambda p: 0.5 * p, params)
  u_ours, _ = ours.update(grads, ours.init(params), params)
  u_theirs, _ = theirs.update(grads, theirs.init(params), params)
  assert jax.tree.structure(u_ours) == jax.tree.structure(u_theirs)
  chex.assert_trees_all_close(u_ours, u_theirs, rtol=1e-6)
  for u in jax.tree.leaves(u_ours):
    assert u.shape == () and u.dtype == jnp.float32


@pytest.mark.parametrize("bad", [jnp.arange(3), jnp.array([True, False])])
def test_init_rejects_integer_and_bool_leaves_naming_the_path(bad):
  params = {"layer": {"w": jnp.ones(3), "step": bad}}
  with pytest.raises(TypeError, match=re.escape("params['layer']['step'] has dtype")):
    rmsprop_jax.rmsprop(0.1).init(params)


def test_update_rejects_a_different_tree_structure():
  tx = rmsprop_jax.rmsprop(0.1)
  state = tx.init({"a": jnp.ones(2), "b": jnp.ones(3)})
  with pytest.raises(ValueError, match="does not have the structure of updates") as e:
    tx.update({"a": jnp.ones(2)}, state)
  assert "'b'" in str(e.value)


def test_update_rejects_a_shape_mismatch_instead_of_broadcasting():
  tx = rmsprop_jax.rmsprop(0.1)
  state = tx.init({"w": jnp.ones((3, 1))})
  with pytest.raises(ValueError) as e:
    tx.update({"w": jnp.ones((3, 4))}, state)
  msg = str(e.value)
  assert "updates['w']" in msg and "(3, 4)" in msg and "(3, 1)" in msg


def test_update_rejects_params_of_another_shape():
  tx = rmsprop_jax.rmsprop(0.1, weight_decay=0.1)
  state = tx.init({"w": jnp.ones(3)})
  with pytest.raises(ValueError, match=re.escape("params has shape (4,)")):
    tx.update({"w": jnp.ones(3)}, state, {"w": jnp.ones(4)})


@pytest.mark.parametrize("decoupled", [False, True])
def test_weight_decay_without_params_raises(decoupled):
  tx = rmsprop_jax.rmsprop(0.1, weight_decay=0.1, decoupled_weight_decay=decoupled)
  state = tx.init(jnp.ones(3))
  with pytest.raises(
    ValueError, match="weight_decay is enabled, so update needs params"
  ):
    tx.update(jnp.ones(3), state)


def test_state_from_another_configuration_is_rejected():
  plain = rmsprop_jax.rmsprop(0.1).init(jnp.ones(3))
  with pytest.raises(ValueError, match="state.trace is None but momentum is enabled"):
    rmsprop_jax.rmsprop(0.1, momentum=0.9).update(jnp.ones(3), plain)
  with pytest.raises(TypeError, match="state must be the RMSPropState"):
    rmsprop_jax.rmsprop(0.1).update(jnp.ones(3), optax.EmptyState())


def test_weight_decay_mask_errors_name_the_problem():
  tx = rmsprop_jax.rmsprop(0.1, weight_decay=0.1, weight_decay_mask={"x": True})
  params = {"w": jnp.ones(3)}
  with pytest.raises(ValueError, match="weight_decay_mask must be a pytree of bools"):
    tx.update(params, tx.init(params), params)
  with pytest.raises(  # refused when the optimizer is built
    TypeError, match=re.escape("weight_decay_mask['w'] must be a Python bool")
  ):
    rmsprop_jax.rmsprop(0.1, weight_decay=0.1, weight_decay_mask={"w": 1.0})
  tx = rmsprop_jax.rmsprop(
    0.1, weight_decay=0.1, weight_decay_mask=lambda p: {"w": jnp.asarray(True)}
  )
  with pytest.raises(  # a callable's result, when the update is traced
    TypeError, match=re.escape("weight_decay_mask['w'] must be a Python bool")
  ):
    tx.update(params, tx.init(params), params)


def test_zero_weight_decay_needs_no_params():
  tx = rmsprop_jax.rmsprop(0.1, weight_decay=0.0)
  updates, _ = tx.update(jnp.ones(3), tx.init(jnp.ones(3)))
  assert updates.shape == (3,)


@pytest.mark.parametrize("factory", [rmsprop_jax.rmsprop, rmsprop_jax.scale_by_rms])
def test_centered_with_low_precision_state_warns(factory):
  args = (0.1,) if factory is rmsprop_jax.rmsprop else ()
  with pytest.warns(UserWarning, match="Use float32 state for centred RMSProp"):
    factory(*args, centered=True, state_dtype=jnp.bfloat16)


CENTRED_BF16 = {
  "rmsprop": lambda: rmsprop_jax.rmsprop(0.1, centered=True, state_dtype=jnp.bfloat16),
  "scale_by_rms": lambda: rmsprop_jax.scale_by_rms(
    centered=True, state_dtype=jnp.bfloat16
  ),
  "torch_rmsprop": lambda: rmsprop_jax.torch_rmsprop(
    centered=True, state_dtype=jnp.bfloat16
  ),
  "keras_rmsprop": lambda: rmsprop_jax.keras_rmsprop(
    centered=True, state_dtype=jnp.bfloat16
  ),
  "tf1_rmsprop": lambda: rmsprop_jax.tf1_rmsprop(
    0.1, centered=True, state_dtype=jnp.bfloat16
  ),
  "timm_rmsprop_tf": lambda: rmsprop_jax.timm_rmsprop_tf(
    centered=True, state_dtype=jnp.bfloat16
  ),
  "tf_keras_legacy_rmsprop": lambda: rmsprop_jax.tf_keras_legacy_rmsprop(
    centered=True, state_dtype=jnp.bfloat16
  ),
  # The constructor runs inside optax, when init is called.
  "inject_hyperparams": lambda: optax.inject_hyperparams(
    rmsprop_jax.rmsprop, static_args=("state_dtype",)
  )(0.1, centered=True, state_dtype=jnp.bfloat16).init(jnp.ones(2)),
}


@pytest.mark.parametrize("entry", list(CENTRED_BF16))
def test_warning_names_the_users_line_from_every_entry_point(entry):
  with pytest.warns(UserWarning, match="centered=True") as record:
    CENTRED_BF16[entry]()
  assert [w.filename for w in record] == [__file__]


@pytest.mark.parametrize(
  ("dtype", "bits"),
  [(jnp.bfloat16, 7), (jnp.float16, 10), (jnp.float8_e4m3fn, 3), (jnp.float8_e5m2, 2)],
)
def test_warning_states_the_formats_own_mantissa_width(dtype, bits):
  with pytest.warns(UserWarning, match=f"with a {bits}-bit mantissa") as record:
    rmsprop_jax.rmsprop(0.1, centered=True, state_dtype=dtype)
  assert "8-bit mantissa" not in str(record[0].message)


def test_numpy_float64_params_without_x64_need_no_warning(recwarn):
  assert not jax.config.read("jax_enable_x64")
  params = np.ones(3)  # float64, the most ordinary NumPy input
  opt = rmsprop_jax.rmsprop(1e-3, momentum=0.9, centered=True)
  state = opt.init(params)
  updates, state = opt.update(np.full(3, 0.5), state, params)
  assert state.nu.dtype == jnp.float32 and updates.dtype == jnp.float32
  assert [str(w.message) for w in recwarn] == []


def test_state_dtype_array_from_inject_hyperparams_points_to_static_args():
  with pytest.raises(TypeError, match=re.escape("static_args=('state_dtype',)")):
    rmsprop_jax.rmsprop(0.1, state_dtype=jnp.zeros((), jnp.bfloat16))


@pytest.mark.parametrize("options", [{"centered": True}, {"momentum": 0.9}])
def test_empty_params_tree_is_accepted(options):
  tx = rmsprop_jax.rmsprop(0.1, **options)
  updates, state = tx.update(None, tx.init(None))
  assert updates is None and state.count is None
