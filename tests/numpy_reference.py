"""A float64 NumPy transcription of the RMSProp rule, independent of the package.

It follows the rule as written in the README line by line, with plain NumPy and
no JAX, so that tests compare the package against the specification rather than
against itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Config:
  learning_rate: float | Callable[[int], float] = 0.01
  decay: float = 0.9
  eps: float = 1e-8
  initial_scale: float = 0.0
  eps_in_sqrt: bool = True
  centered: bool = False
  momentum: float | None = None
  nesterov: bool = False
  bias_correction: bool = False
  weight_decay: float = 0.0
  decoupled_weight_decay: bool = False
  mask: bool = True  # whether weight decay applies to this leaf
  lr_in_momentum: bool = True
  maximize: bool = False
  caution: bool = False
  corrected_weight_decay: bool = False
  max_lr: float | None = None
  # Rows (indices along axis 0) whose gradient, after coupled weight decay, is
  # zero in every entry sit the step out: update 0, nu/mu/trace rows kept.
  lazy_rows: bool = False


@dataclass
class LeafState:
  nu: np.ndarray
  mu: np.ndarray
  trace: np.ndarray
  k: int = 0


def init(p: np.ndarray, c: Config) -> LeafState:
  p = np.asarray(p)
  return LeafState(
    nu=np.full(p.shape, c.initial_scale, np.float64),
    mu=np.zeros(p.shape, np.complex128 if np.iscomplexobj(p) else np.float64),
    trace=np.zeros(p.shape, np.complex128 if np.iscomplexobj(p) else np.float64),
  )


def step(
  g: np.ndarray, p: np.ndarray, st: LeafState, c: Config
) -> tuple[np.ndarray, LeafState]:
  """One RMSProp step for one leaf, in float64 (complex128 for complex)."""
  cplx = np.iscomplexobj(g) or np.iscomplexobj(p)
  wide = np.complex128 if cplx else np.float64
  g = np.asarray(g).astype(wide)
  p = np.asarray(p).astype(wide)
  lr = c.learning_rate(st.k) if callable(c.learning_rate) else c.learning_rate
  rho = c.decay

  if c.maximize:
    g = -g
  if c.weight_decay and not c.decoupled_weight_decay and c.mask:
    g = g + c.weight_decay * p

  nu = rho * st.nu + (1 - rho) * np.abs(g) ** 2
  mu = rho * st.mu + (1 - rho) * g
  if c.bias_correction:
    corr = 1 - rho ** (st.k + 1)
    nu_hat, mu_hat = nu / corr, mu / corr
  else:
    nu_hat, mu_hat = nu, mu
  if c.centered:
    v = np.maximum(nu_hat - np.abs(mu_hat) ** 2, 0.0)
  else:
    v = nu_hat
  d = np.sqrt(v + c.eps) if c.eps_in_sqrt else np.sqrt(v) + c.eps
  s = g / d

  trace = st.trace
  if c.momentum is None:
    u = -lr * s
  elif c.lr_in_momentum:
    trace = c.momentum * trace + lr * s
    u = -(lr * s + c.momentum * trace) if c.nesterov else -trace
  else:
    trace = c.momentum * trace + s
    u = -lr * (s + c.momentum * trace) if c.nesterov else -lr * trace

  if c.caution:  # keep only the entries that descend: Re(conj(u) g) < 0
    keep = (np.real(np.conj(u) * g) < 0).astype(np.float64)
    u = u * keep / max(keep.mean(), 1e-3)

  if c.weight_decay and c.decoupled_weight_decay and c.mask:
    max_lr = lr if c.max_lr is None else c.max_lr
    scale = lr * lr / max_lr if c.corrected_weight_decay else lr
    u = u - scale * c.weight_decay * p
  return _lazy_rows(g, u, st, LeafState(nu=nu, mu=mu, trace=trace, k=st.k + 1), c)


def _lazy_rows(
  g: np.ndarray, u: np.ndarray, old: LeafState, new: LeafState, c: Config
) -> tuple[np.ndarray, LeafState]:
  """With ``c.lazy_rows``, the rows of zero gradient keep ``old``'s state.

  The step count advances for every row: the schedule and bias correction
  follow the optimizer's steps, not the row's.
  """
  if not c.lazy_rows:
    return u, new
  still = np.all(g == 0, axis=tuple(range(1, g.ndim)))
  still = still.reshape(still.shape + (1,) * (g.ndim - still.ndim))
  return np.where(still, 0, u), LeafState(
    nu=np.where(still, old.nu, new.nu),
    mu=np.where(still, old.mu, new.mu),
    trace=np.where(still, old.trace, new.trace),
    k=new.k,
  )
