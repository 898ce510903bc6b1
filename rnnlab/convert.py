"""Weight converters between rnnlab and torch.nn.RNN/LSTM/GRU state dicts and
flax.linen LSTMCell / OptimizedLSTMCell / GRUCell params.

PyTorch stores ``weight_ih_l{k}[_reverse]`` as (G, D) with two biases; rnnlab
stores ``w_x_DxG`` (the transpose) and merges biases that are only ever summed
(see rnnlab/cells/_common.py). Exporting splits them back: the merged bias goes
to ``bias_ih`` and ``bias_hh`` gets the part that cannot be merged (GRU's n-gate
bias) and zeros elsewhere, which computes the same function.

torch is not a dependency: state dicts come back as numpy arrays; load them with
``module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from rnnlab import cells as cells_lib
from rnnlab.layers import Stack

_TORCH_MODES = {"RNN_TANH": ("elman", {"nonlinearity": "tanh"}), "RNN_RELU": ("elman", {"nonlinearity": "relu"}),
                "LSTM": ("lstm", {}), "GRU": ("gru", {})}
_N_GATES = {"elman": 1, "lstm": 4, "gru": 3}
_KEY = re.compile(r"^(weight|bias)_(ih|hh)_l(\d+)(_reverse)?$")


def _np(v) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def _check_cell(cell: str) -> str:
    name = cells_lib.get(cell).name
    if name not in _N_GATES:
        raise ValueError(f"cell {name!r} has no PyTorch/Flax counterpart; convertible: {sorted(_N_GATES)}")
    return name


def from_torch(state_dict: Mapping[str, Any], cell: str, dtype=None) -> dict:
    """rnnlab stack params from a torch.nn.RNN/LSTM/GRU ``state_dict()``; layers
    and directions are read from the keys. ``bias=False`` modules map to zero biases."""
    cell = _check_cell(cell)
    groups: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for k, v in state_dict.items():
        m = _KEY.match(k)
        if m is None:
            raise ValueError(
                f"state_dict key {k!r} is not a torch.nn.RNN/LSTM/GRU weight "
                "(proj_size > 0, i.e. LSTMP, is not convertible)"
            )
        kind, side, layer, rev = m.groups()
        groups.setdefault((int(layer), "backward" if rev else "forward"), {})[f"{kind}_{side}"] = _np(v)
    params: dict = {}
    for (layer, direction), g in sorted(groups.items()):
        w_ih, w_hh = g["weight_ih"], g["weight_hh"]
        n_g, d_h = _N_GATES[cell], w_hh.shape[1]
        if w_hh.shape[0] != n_g * d_h:
            raise ValueError(f"weight_hh_l{layer} has shape {w_hh.shape}, expected ({n_g}*H, H) for {cell}")
        zeros = np.zeros(n_g * d_h, w_hh.dtype)
        b_ih, b_hh = g.get("bias_ih", zeros), g.get("bias_hh", zeros)
        p = {"w_x_DxG": w_ih.T, "w_h_HxG": w_hh.T}
        if cell == "gru":
            p["b_G"] = b_ih + np.concatenate([b_hh[: 2 * d_h], np.zeros(d_h, b_hh.dtype)])
            p["b_hn_H"] = b_hh[2 * d_h :]
        else:
            p["b_G"] = b_ih + b_hh
        params.setdefault(f"layer_{layer}", {})[direction] = {
            k: jnp.asarray(v, dtype or v.dtype) for k, v in p.items()
        }
    return params


def to_torch(params: Mapping, cell: str) -> dict[str, np.ndarray]:
    """A torch.nn.RNN/LSTM/GRU state dict (numpy arrays) from rnnlab stack params."""
    cell = _check_cell(cell)
    out = {}
    for layer_name, dirs in params.items():
        layer = int(layer_name.split("_")[1])
        for direction, p in dirs.items():
            sfx = f"_l{layer}" + ("_reverse" if direction == "backward" else "")
            b = np.asarray(p["b_G"])
            out[f"weight_ih{sfx}"] = np.ascontiguousarray(np.asarray(p["w_x_DxG"]).T)
            out[f"weight_hh{sfx}"] = np.ascontiguousarray(np.asarray(p["w_h_HxG"]).T)
            out[f"bias_ih{sfx}"] = b.copy()
            b_hh = np.zeros_like(b)
            if cell == "gru":
                b_hh[2 * b.shape[0] // 3 :] = np.asarray(p["b_hn_H"])
            out[f"bias_hh{sfx}"] = b_hh
    return out


def stack_from_torch(module) -> tuple[Stack, dict]:
    """(Stack, params) computing what a torch.nn.RNN/LSTM/GRU module computes.
    Its ``batch_first`` is the caller's business: rnnlab stacks are time-major."""
    if getattr(module, "proj_size", 0):
        raise ValueError("module: torch LSTM with proj_size > 0 (LSTMP) is not convertible")
    if module.mode not in _TORCH_MODES:
        raise ValueError(f"module: unsupported torch RNN mode {module.mode!r}")
    name, opts = _TORCH_MODES[module.mode]
    if name == "lstm":
        opts = {"forget_bias": 0.0}
    stack = Stack(
        cells_lib.get(name, **opts), module.input_size, module.hidden_size,
        num_layers=module.num_layers, bidirectional=module.bidirectional,
    )
    return stack, from_torch(module.state_dict(), name)


def carries_from_torch(h0, c0=None, *, num_layers: int, bidirectional: bool) -> dict:
    """rnnlab carries from torch's (L * directions, B, H) initial states."""
    h0 = jnp.asarray(_np(h0))
    c0 = None if c0 is None else jnp.asarray(_np(c0))
    dirs = ("forward", "backward") if bidirectional else ("forward",)
    out = {}
    for layer in range(num_layers):
        for j, d in enumerate(dirs):
            i = layer * len(dirs) + j
            out.setdefault(f"layer_{layer}", {})[d] = h0[i] if c0 is None else (c0[i], h0[i])
    return out


def carries_to_torch(carries: Mapping) -> tuple[np.ndarray, np.ndarray | None]:
    """torch's (h_n, c_n) (each L * directions x B x H; c_n None without a cell state)."""
    hs, cs = [], []
    for layer in sorted(carries, key=lambda k: int(k.split("_")[1])):
        for d in ("forward", "backward"):
            if d in carries[layer]:
                c = carries[layer][d]
                if isinstance(c, (tuple, list)):
                    cs.append(np.asarray(c[0]))
                    c = c[1]
                hs.append(np.asarray(c))
    return np.stack(hs), (np.stack(cs) if cs else None)


_FLAX_GATES = {"lstm": "ifgo", "gru": "rzn"}


def from_flax(cell_params: Mapping, cell: str) -> dict:
    """One rnnlab layer's params from flax.linen LSTMCell / OptimizedLSTMCell
    (``ii..io`` kernels, ``hi..ho`` kernels with biases) or GRUCell (``ir,iz,in``
    with biases, ``hr,hz`` kernels, ``hn`` with bias)."""
    cell = _check_cell(cell)
    if cell not in _FLAX_GATES:
        raise ValueError(f"cell: flax.linen has no {cell!r} cell; convertible: lstm, gru")
    p = cell_params.get("params", cell_params)
    gates = _FLAX_GATES[cell]
    w_x = jnp.concatenate([p[f"i{g}"]["kernel"] for g in gates], axis=1)
    w_h = jnp.concatenate([p[f"h{g}"]["kernel"] for g in gates], axis=1)
    if cell == "lstm":
        return {"w_x_DxG": w_x, "w_h_HxG": w_h, "b_G": jnp.concatenate([p[f"h{g}"]["bias"] for g in gates])}
    b = jnp.concatenate([p[f"i{g}"]["bias"] for g in gates])
    return {"w_x_DxG": w_x, "w_h_HxG": w_h, "b_G": b, "b_hn_H": p["hn"]["bias"]}


def to_flax(layer_params: Mapping, cell: str) -> dict:
    """flax.linen LSTMCell/OptimizedLSTMCell or GRUCell params from one rnnlab layer."""
    cell = _check_cell(cell)
    if cell not in _FLAX_GATES:
        raise ValueError(f"cell: flax.linen has no {cell!r} cell; convertible: lstm, gru")
    gates = _FLAX_GATES[cell]
    n = len(gates)
    wx = jnp.split(layer_params["w_x_DxG"], n, axis=1)
    wh = jnp.split(layer_params["w_h_HxG"], n, axis=1)
    b = jnp.split(layer_params["b_G"], n)
    out = {}
    for j, g in enumerate(gates):
        if cell == "lstm":
            out[f"i{g}"] = {"kernel": wx[j]}
            out[f"h{g}"] = {"kernel": wh[j], "bias": b[j]}
        else:
            out[f"i{g}"] = {"kernel": wx[j], "bias": b[j]}
            out[f"h{g}"] = {"kernel": wh[j]}
    if cell == "gru":
        out["hn"]["bias"] = layer_params["b_hn_H"]
    return out
