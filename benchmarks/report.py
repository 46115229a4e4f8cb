"""The text report and the verdicts of ``run.py``'s result."""

from __future__ import annotations

from typing import Any

import compile_time
import eager
import jitted
import memory
from common import fmt_ms, mark, table
from config import EAGER_SPEEDUP, EAGER_VS_FLOOR


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
  """Every verdict of the run, section by section."""
  return (
    jitted.targets(result["jitted"])
    + eager.targets(result["eager"])
    + compile_time.targets(result["compile"])
    + memory.targets(result["memory"])
  )


def _header(m: dict[str, Any]) -> list[str]:
  out = [
    f"rmsprop_jax benchmarks -- {m['cpu']} ({m['cores']} cores), "
    f"jax {m['jax']}, optax {m['optax']}, torch {m['torch'] or 'not installed'}"
  ]
  bw = m.get("bandwidth")
  if bw:
    mib = bw["array_bytes"] / 2**20
    out.append(
      f"Streaming bandwidth ({mib:g} MiB arrays): copy {bw['copy']['gbps']:.1f} GB/s, "
      f"triad {bw['triad']['gbps']:.1f} GB/s"
    )
  return out + [""]


def _jitted(rows: list[dict[str, Any]]) -> list[str]:
  has_torch = any(r["torch_ms"] is not None for r in rows)
  headers = ["tree", "variant", "rmsprop_jax", "optax", "floor"]
  headers += ["torch"] if has_torch else []
  headers += ["/optax", "/floor", "GB/s", "optax GB/s", "floor GB/s", "of BW", "target"]
  body = []
  for r in rows:
    line = [r["tree"], r["variant"]]
    line += [fmt_ms(r[f"{k}_ms"]) for k in ("rmsprop_jax", "optax", "floor")]
    line += [fmt_ms(r["torch_ms"])] if has_torch else []
    line += [f"{r['vs_optax']:.2f}x", f"{r['vs_floor']:.2f}x"]
    line += [f"{r[f'{k}_gbps']:.1f}" for k in ("rmsprop_jax", "optax", "floor")]
    line += [f"{r['rmsprop_jax_of_bandwidth']:.0%}", mark(r["pass"])]
    body.append(line)
  title = (
    "1. Jitted train step, params and state donated (ms per step, median; "
    "GB/s = bytes the step must move / time; of BW = rmsprop_jax's GB/s / copy's)"
  )
  return [title, table(headers, body), ""]


def _eager(rows: list[dict[str, Any]]) -> list[str]:
  body = [
    [
      f"{r['tree']} ({r['leaves']} leaves)",
      r["variant"],
      fmt_ms(r["rmsprop_jax_ms"]),
      fmt_ms(r["floor_ms"]),
      f"{r['vs_floor']:.2f}x",
      f"{r['overhead_us_per_leaf']:.1f}",
      mark(r["floor_pass"]),
      fmt_ms(r["optax_ms"]),
      f"{r['speedup']:.1f}x",
      mark(r["pass"]),
    ]
    for r in rows
  ]
  headers = ["tree", "variant", "rmsprop_jax", "floor", "/floor", "us/leaf"]
  headers += [f"<= {EAGER_VS_FLOOR:g}x floor", "optax", "speedup"]
  headers += [f">= {EAGER_SPEEDUP:g}x optax"]
  title = (
    "2. Eager update, no user jit (ms per step, median; floor = a jitted call "
    "taking and returning the same arrays, trivial body; us/leaf = "
    "(rmsprop_jax - floor) / leaves)"
  )
  return [title, table(headers, body), ""]


def _compile(rows: list[dict[str, Any]]) -> list[str]:
  def pair(r: dict[str, Any], lib: str) -> str:
    return f"{r[f'{lib}_lower_ms']:.0f} + {r[f'{lib}_compile_ms']:.0f}"

  body = [
    [
      r["leaves"],
      r["variant"],
      pair(r, "rmsprop_jax"),
      pair(r, "optax"),
      f"{r['vs_optax']:.2f}x",
      f"{r['rmsprop_jax_cpu_ms']:.0f}",
      f"{r['optax_cpu_ms']:.0f}",
      f"{r['cpu_vs_optax']:.2f}x",
      mark(r["pass"]),
    ]
    for r in rows
  ]
  headers = ["leaves", "variant", "rmsprop_jax lower+compile", "optax lower+compile"]
  headers += ["wall ratio", "rmsprop_jax CPU", "optax CPU", "CPU ratio", "target"]
  title = (
    "3. Compile time of the jitted update, caches cleared "
    "(ms, median; verdict on CPU time)"
  )
  return [title, table(headers, body), ""]


def _state_line(r: dict[str, Any]) -> list[Any]:
  head = [r["lib"], r["variant"], r["state_dtype"]]
  if not r["supported"]:
    return head + ["unsupported", "-", "-"]
  return head + [
    f"{r['bytes_per_param']:g}",
    f"{r['arrays_per_param_leaf']:g}",
    r["fixed_bytes"],
  ]


def _memory(mem: dict[str, Any]) -> list[str]:
  if not mem["state"]:
    return []
  headers = ["library", "variant", "state dtype", "B/param", "arrays/leaf", "+ fixed B"]
  states = table(headers, [_state_line(r) for r in mem["state"]])
  body = [
    [r["variant"]]
    + [
      f"{r[lib][key]:,}" for key in ("temp_bytes", "alias_bytes") for lib in memory.LIBS
    ]
    + [mark(r["pass"])]
    for r in mem["step"]
  ]
  headers = ["train step", "rmsprop_jax temp B", "optax temp B"]
  headers += ["rmsprop_jax aliased B", "optax aliased B", "target"]
  title = f"4. Memory ({mem['tree']}, {mem['params']:,} params)"
  return [title, states, "", table(headers, body), ""]


def report(result: dict[str, Any]) -> str:
  """Every section as a table, then every verdict."""
  out = _header(result["machine"])
  if result["jitted"]:
    out += _jitted(result["jitted"])
  if result["eager"]:
    out += _eager(result["eager"])
  if result["compile"]:
    out += _compile(result["compile"])
  out += _memory(result["memory"])
  verdicts = [[t["name"], mark(t["pass"])] for t in result["targets"]]
  n_miss = sum(not t["pass"] for t in result["targets"])
  out += ["Targets", table(["target", ""], verdicts)]
  out.append(f"\n{len(result['targets']) - n_miss} PASS, {n_miss} MISS")
  return "\n".join(out)
