"""The text tables of the accelerator profile's result."""

from __future__ import annotations

from typing import Any

from common import fmt_ms, table

LIBS = ("rmsprop_jax", "optax", "floor")


def _header(result: dict[str, Any]) -> list[str]:
  d, bw = result["device"], result["bandwidth"]
  out = [
    f"rmsprop_jax accelerator profile -- {d['device_kind']} ({d['platform']}), "
    f"jax {d['jax']}, jaxlib {d['jaxlib']}, optax {d['optax']}"
  ]
  if d["nvidia_smi"]:
    out.append(d["nvidia_smi"])
  mib = bw["array_bytes"] / 2**20
  out.append(
    f"Measured bandwidth ({mib:g} MiB arrays): copy {_num(bw['copy']['gbps'])} GB/s "
    f"(the reference), triad {_num(bw['triad']['gbps'])} GB/s"
  )
  return out + [""]


def _num(x: float) -> str:
  return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def _rate(c: dict[str, Any]) -> str:
  return f"{_num(c['gbps'])} ({c['of_copy']:.0%})"


def _steps(rows: list[dict[str, Any]]) -> list[str]:
  headers = ["tree", "variant", *LIBS, "/optax", "/floor"]
  headers += [f"{lib} GB/s (of copy)" for lib in LIBS]
  body = []
  for r in rows:
    c = r["contenders"]
    line = [r["tree"], r["variant"], *(fmt_ms(c[lib]["median_ms"]) for lib in LIBS)]
    line += [f"{r['vs_optax']:.2f}x", f"{r['vs_floor']:.2f}x"]
    body.append(line + [_rate(c[lib]) for lib in LIBS])
  title = (
    "Jitted train step, params and state donated (ms per step, median; "
    "GB/s = bytes the step must move / time)"
  )
  return [title, table(headers, body), ""]


def _dtypes(rows: list[dict[str, Any]]) -> list[str]:
  plain = [r for r in rows if r["state_dtype_vs_float32"]]
  if not plain:
    return []
  names = ["rmsprop_jax"] + [
    f"rmsprop_jax {dt}" for dt in plain[0]["state_dtype_vs_float32"]
  ]
  dtypes = [plain[0]["contenders"][n]["state_dtype"] for n in names]
  headers = ["tree", *(f"{dt} ms" for dt in dtypes)]
  headers += [f"{dt} / float32" for dt in dtypes[1:]]
  headers += [f"{dt} MB/step, GB/s" for dt in dtypes]
  body = []
  for r in plain:
    c = [r["contenders"][n] for n in names]
    line = [r["tree"], *(fmt_ms(x["median_ms"]) for x in c)]
    line += [f"{r['state_dtype_vs_float32'][dt]:.2f}x" for dt in dtypes[1:]]
    line += [f"{_num(x['bytes_per_step'] / 1e6)}, {_num(x['gbps'])}" for x in c]
    body.append(line)
  title = "State dtype, plain RMSProp (rmsprop_jax train step, ms per step, median)"
  return [title, table(headers, body), ""]


def report(result: dict[str, Any]) -> str:
  """The device, its bandwidth, the train steps and the state dtypes."""
  out = _header(result) + _steps(result["steps"]) + _dtypes(result["steps"])
  return "\n".join(out)
