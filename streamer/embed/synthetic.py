"""Synthetic ONNX models with the exact signatures of the published embedding models.

The real Astromer and ATCAT weights live on the HuggingFace Hub, which tests and benchmarks cannot
reach. The builders here write ONNX files whose input/output names, dtypes and shapes are identical
to the published files (see ``shared/spec/models.md``), with random but deterministic weights, so
the same loading and inference code path can be exercised offline.

The graphs are small pre-LN transformer encoders written directly with :mod:`onnx.helper`:

* per-timestep features -> linear to ``d_model`` (+ band embedding for ATCAT);
* ``n_layers`` x [LayerNorm -> multi-head self-attention -> residual,
  LayerNorm -> FFN (GELU) -> residual];
* final LayerNorm -> linear to ``embed_dim`` = ``sequence`` output;
* pooled heads (masked mean, masked max, or the last valid position).

Every input reaches every output, padded keys are excluded from attention with an additive
``-1e9`` bias (plus a causal bias for ATCAT), and pooled outputs only read valid positions, so
padding values never leak into ``mean`` / ``max`` / ``last``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "ATCAT_N_BANDS",
    "OPSET",
    "build_astromer",
    "build_astromer1_sized",
    "build_atcat",
    "build_atcat_sized",
]

OPSET = 18
"""ONNX opset of the generated graphs (LayerNormalization needs >= 17; 18 makes all Reduce* ops
take ``axes`` as an input)."""

# IR version 8 is what opset 18 was released with; onnxruntime accepts it on every version we
# support, whereas onnx's default IR version can be newer than the installed runtime understands.
_IR_VERSION = 8

ATCAT_N_BANDS = 6
"""Rows of the ATCAT band-embedding table (LSST u, g, r, i, z, y)."""

# Periods (days) of the sin/cos time features: from intra-night to multi-year scales, so a change
# of any time value moves at least a few of the features noticeably.
_TIME_PERIODS_DAYS = (0.5, 2.0, 7.0, 30.0, 100.0, 365.25, 1000.0, 3000.0)

# Additive attention bias for masked keys; large enough that exp() underflows to exactly 0 in float32.
_MASK_BIAS = -1e9

# Inputs are clipped to this magnitude before the log scaling: float16 inputs overflow to inf for
# fluxes above 65504, and clipping keeps the features (and hence every output) finite.
_INPUT_CLIP = 1e30


class _GraphBuilder:
    """Accumulates nodes and initializers of one ONNX graph with unique, readable names."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counter = 0

    def _fresh(self, hint: str) -> str:
        self._counter += 1
        return f"{hint}_{self._counter}"

    def const(self, value: np.ndarray | float | int | list[int], name: str | None = None) -> str:
        """Add an initializer; Python floats become float32 scalars, ints / int lists int64."""
        if isinstance(value, np.ndarray):
            array = value
        elif isinstance(value, float):
            array = np.asarray(value, dtype=np.float32)
        else:
            array = np.asarray(value, dtype=np.int64)
        name = name or self._fresh("const")
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op_multi(self, op_type: str, *inputs: str, outputs: int, **attrs: Any) -> list[str]:
        """Append a node with ``outputs`` outputs and return their names."""
        out_names = [self._fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), out_names, name=self._fresh(f"node_{op_type}"), **attrs)
        )
        return out_names

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        """Append a single-output node and return its output name."""
        return self.op_multi(op_type, *inputs, outputs=1, **attrs)[0]

    def weight(self, name: str, fan_in: int, shape: tuple[int, ...]) -> str:
        # 1/sqrt(fan_in) keeps the variance of each linear map's output close to its input's, so
        # activations stay O(1) through the network regardless of width.
        w = self.rng.standard_normal(shape) / np.sqrt(fan_in)
        return self.const(w.astype(np.float32), name)

    def linear(self, x: str, fan_in: int, fan_out: int, name: str) -> str:
        return self.apply(x, self.linear_params(fan_in, fan_out, name))

    def linear_params(self, fan_in: int, fan_out: int, name: str) -> tuple[str, str]:
        """Weight and bias of a linear map, to apply to several tensors."""
        w = self.weight(f"{name}.weight", fan_in, (fan_in, fan_out))
        # Non-zero biases so that a feature vector of zeros still produces a non-trivial output.
        b = self.const((0.1 * self.rng.standard_normal(fan_out)).astype(np.float32), f"{name}.bias")
        return w, b

    def apply(self, x: str, params: tuple[str, str]) -> str:
        return self.op("Add", self.op("MatMul", x, params[0]), params[1])

    def layer_norm(self, x: str, dim: int, name: str) -> str:
        scale = (1.0 + 0.1 * self.rng.standard_normal(dim)).astype(np.float32)
        bias = (0.1 * self.rng.standard_normal(dim)).astype(np.float32)
        return self.op(
            "LayerNormalization",
            x,
            self.const(scale, f"{name}.weight"),
            self.const(bias, f"{name}.bias"),
            axis=-1,
            epsilon=1e-5,
        )

    def gelu(self, x: str) -> str:
        # Exact (erf) GELU spelled out with opset-18 ops; onnxruntime fuses this pattern into its
        # Gelu kernel at the default optimization level.
        inner = self.op("Erf", self.op("Mul", x, self.const(float(1.0 / np.sqrt(2.0)))))
        return self.op("Mul", self.op("Mul", x, self.const(0.5)), self.op("Add", inner, self.const(1.0)))

    def signed_log(self, x: str) -> str:
        """``sign(x) * log(1 + |x|)``: compresses fluxes up to ~1e6 (and days up to ~1e4) to O(10)."""
        clipped = self.op("Clip", x, self.const(-_INPUT_CLIP), self.const(_INPUT_CLIP))
        magnitude = self.op("Log", self.op("Add", self.op("Abs", clipped), self.const(1.0)))
        return self.op("Mul", self.op("Sign", clipped), magnitude)

    def time_features(self, t: str) -> list[str]:
        """Sin/cos of ``t`` (days, shape ``[N, S, 1]``) at the fixed periods in ``_TIME_PERIODS_DAYS``."""
        omega = (2.0 * np.pi / np.asarray(_TIME_PERIODS_DAYS)).astype(np.float32)
        phase = self.op("Mul", t, self.const(omega, "time_features.omega"))
        return [self.op("Sin", phase), self.op("Cos", phase)]

    def attention(self, x: str, bias: str, d_model: int, n_heads: int, name: str) -> str:
        """Multi-head self-attention of ``x`` ``[N, S, D]`` with additive ``bias`` ``[N, 1, S|1, S]``."""
        head_dim = d_model // n_heads
        # One fused QKV projection (as torch's nn.MultiheadAttention exports it) then split. The
        # plain 1/sqrt(fan_in) scale gives logits of std ~1, i.e. broad attention: every valid key
        # then contributes to every query, which is what tests need (peaky random attention would
        # make most timesteps invisible to most outputs).
        qkv = self.linear(x, d_model, 3 * d_model, f"{name}.qkv")
        q, k, v = self.op_multi("Split", qkv, outputs=3, axis=-1, num_outputs=3)
        heads_shape = self.const([0, 0, n_heads, head_dim])
        # [N, S, D] -> [N, H, S, Dh]; K goes straight to [N, H, Dh, S] for the score MatMul.
        q = self.op("Transpose", self.op("Reshape", q, heads_shape), perm=[0, 2, 1, 3])
        k = self.op("Transpose", self.op("Reshape", k, heads_shape), perm=[0, 2, 3, 1])
        v = self.op("Transpose", self.op("Reshape", v, heads_shape), perm=[0, 2, 1, 3])
        q = self.op("Mul", q, self.const(float(1.0 / np.sqrt(head_dim))))
        scores = self.op("Add", self.op("MatMul", q, k), bias)
        probs = self.op("Softmax", scores, axis=-1)
        context = self.op("Transpose", self.op("MatMul", probs, v), perm=[0, 2, 1, 3])
        context = self.op("Reshape", context, self.const([0, 0, d_model]))
        return self.linear(context, d_model, d_model, f"{name}.out")

    def encoder(self, h: str, bias: str, *, n_layers: int, d_model: int, n_heads: int, ffn: int) -> str:
        """Pre-LN transformer encoder stack followed by the final LayerNorm."""
        for i in range(n_layers):
            name = f"layer{i}"
            attn = self.attention(self.layer_norm(h, d_model, f"{name}.ln1"), bias, d_model, n_heads, name)
            h = self.op("Add", h, attn)
            hidden = self.gelu(
                self.linear(self.layer_norm(h, d_model, f"{name}.ln2"), d_model, ffn, f"{name}.ffn1")
            )
            h = self.op("Add", h, self.linear(hidden, ffn, d_model, f"{name}.ffn2"))
        return self.layer_norm(h, d_model, "final_ln")

    def masked_mean(self, seq: str, weights: str) -> str:
        """Mean of ``seq`` ``[N, S, E]`` over S weighted by the 0/1 ``weights`` ``[N, S, 1]``."""
        axis = self.const([1])
        total = self.op("ReduceSum", self.op("Mul", seq, weights), axis, keepdims=0)
        # max(count, 1) keeps an all-padding window finite (it yields zeros) instead of 0/0.
        count = self.op("Max", self.op("ReduceSum", weights, axis, keepdims=0), self.const(1.0))
        return self.op("Div", total, count)


def _check_sizes(n_layers: int, d_model: int, n_heads: int, ffn: int, seq_size: int, embed_dim: int) -> None:
    for label, value in [
        ("n_layers", n_layers),
        ("d_model", d_model),
        ("n_heads", n_heads),
        ("ffn", ffn),
        ("seq_size", seq_size),
        ("embed_dim", embed_dim),
    ]:
        if value < (0 if label == "n_layers" else 1):
            raise ValueError(f"{label} must be positive (n_layers: non-negative), got {value}")
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")


def _save(
    builder: _GraphBuilder,
    path: str | os.PathLike[str],
    *,
    graph_name: str,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    metadata: dict[str, str],
) -> Path:
    graph = helper.make_graph(builder.nodes, graph_name, inputs, outputs, initializer=builder.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_operatorsetid("", OPSET)],
        ir_version=_IR_VERSION,
        producer_name="streamer.embed.synthetic",
    )
    helper.set_model_props(model, {"synthetic": "true", **metadata})
    # full_check runs strict shape inference, so a wrong declared output shape fails here, at build
    # time, rather than as a confusing runtime mismatch.
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    onnx.save_model(model, path)
    return path


def build_astromer(
    path: str | os.PathLike[str],
    *,
    n_layers: int = 1,
    d_model: int = 16,
    n_heads: int = 2,
    ffn: int = 32,
    seq_size: int = 200,
    embed_dim: int = 256,
    seed: int = 0,
) -> Path:
    """Write a random Astromer-signature ONNX model.

    Inputs ``input``, ``times``, ``mask_in`` are float32 ``[batch, seq_size, 1]``; outputs are
    ``mean`` and ``max`` float32 ``[batch, embed_dim]`` (masked mean / max over valid timesteps of
    ``sequence``) and ``sequence`` float32 ``[batch, seq_size, embed_dim]``.

    Parameters
    ----------
    path : str or os.PathLike
        Destination ``.onnx`` file (overwritten).
    n_layers : int, optional
        Number of pre-LN transformer encoder layers.
    d_model : int, optional
        Width of the residual stream.
    n_heads : int, optional
        Attention heads; must divide ``d_model``.
    ffn : int, optional
        Hidden width of the feed-forward block.
    seq_size : int, optional
        Fixed sequence length of the inputs.
    embed_dim : int, optional
        Width of the output embeddings.
    seed : int, optional
        Seed of ``numpy.random.default_rng``; the same arguments give a byte-identical file.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    ValueError
        If a size is not positive or ``d_model`` is not divisible by ``n_heads``.
    """
    _check_sizes(n_layers, d_model, n_heads, ffn, seq_size, embed_dim)
    g = _GraphBuilder(np.random.default_rng(seed))
    float_shape: list[str | int] = ["batch", seq_size, 1]
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, float_shape)
        for n in ("input", "times", "mask_in")
    ]

    # Per-timestep features, [N, S, F]: centred magnitude, log-compressed centred time (+-1000 days
    # -> +-7) and periodic encodings of the time.
    features = [
        "input",
        g.op("Mul", g.signed_log("times"), g.const(0.25)),
        *g.time_features("times"),
    ]
    n_features = 2 + 2 * len(_TIME_PERIODS_DAYS)
    h = g.linear(g.op("Concat", *features, axis=-1), n_features, d_model, "input_proj")

    # Key-padding bias [N, 1, 1, S]: 0 for valid keys, -1e9 for padding.
    mask_row = g.op("Unsqueeze", g.op("Transpose", "mask_in", perm=[0, 2, 1]), g.const([1]))
    bias = g.op("Mul", g.op("Sub", g.const(1.0), mask_row), g.const(_MASK_BIAS))

    h = g.encoder(h, bias, n_layers=n_layers, d_model=d_model, n_heads=n_heads, ffn=ffn)
    output_proj = g.linear_params(d_model, embed_dim, "output_proj")
    w, b = output_proj
    g.nodes.append(helper.make_node("Add", [g.op("MatMul", h, w), b], ["sequence"], name="sequence_out"))

    # The heads pool the encoder states, then project: for the mean this equals pooling the
    # sequence output (the projection is linear), and it keeps tiny benchmark models tiny
    # (onnxruntime computes every output on each run, requested or not).
    g.nodes.append(
        helper.make_node(
            "Add", [g.op("MatMul", g.masked_mean(h, "mask_in"), w), b], ["mean"], name="mean_out"
        )
    )
    # Masked max over the encoder states: padded positions are replaced by a very negative value
    # so they never win; a window with no valid point at all gets zeros instead of that sentinel.
    valid = g.op("Cast", "mask_in", to=TensorProto.BOOL)
    filled = g.op("Where", valid, h, g.const(-3.0e38))
    max_raw = g.op("ReduceMax", filled, g.const([1]), keepdims=0)
    any_valid = g.op("Cast", g.op("ReduceMax", "mask_in", g.const([1]), keepdims=0), to=TensorProto.BOOL)
    max_h = g.op("Where", any_valid, max_raw, g.const(0.0))
    g.nodes.append(helper.make_node("Add", [g.op("MatMul", max_h, w), b], ["max"], name="max_out"))

    outputs = [
        helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch", embed_dim]),
        helper.make_tensor_value_info("max", TensorProto.FLOAT, ["batch", embed_dim]),
        helper.make_tensor_value_info("sequence", TensorProto.FLOAT, ["batch", seq_size, embed_dim]),
    ]
    return _save(
        g,
        path,
        graph_name="synthetic_astromer",
        inputs=inputs,
        outputs=outputs,
        metadata={"architecture": "astromer", "n_layers": str(n_layers), "seed": str(seed)},
    )


def build_atcat(
    path: str | os.PathLike[str],
    *,
    n_layers: int = 1,
    d_model: int = 16,
    n_heads: int = 2,
    ffn: int = 32,
    seq_size: int = 243,
    embed_dim: int = 384,
    fp16: bool = False,
    seed: int = 0,
) -> Path:
    """Write a random ATCAT-signature ONNX model (causal, multi-band, fluxes).

    Inputs ``flux``, ``flux_err``, ``time`` are ``[batch, seq_size]`` float32 (float16 if ``fp16``),
    ``mask`` is bool and ``channel_index`` int64 (0..5) of the same shape. Outputs ``last`` and
    ``mean`` ``[batch, embed_dim]`` and ``sequence`` ``[batch, seq_size, embed_dim]`` are float32
    (float16 if ``fp16``). ``last`` is ``sequence`` at position ``sum(mask) - 1``, which assumes
    the mask is contiguous from the left. Attention is causal and ignores padded keys.

    Parameters
    ----------
    path : str or os.PathLike
        Destination ``.onnx`` file (overwritten).
    n_layers : int, optional
        Number of pre-LN transformer encoder layers.
    d_model : int, optional
        Width of the residual stream.
    n_heads : int, optional
        Attention heads; must divide ``d_model``.
    ffn : int, optional
        Hidden width of the feed-forward block.
    seq_size : int, optional
        Fixed sequence length of the inputs.
    embed_dim : int, optional
        Width of the output embeddings.
    fp16 : bool, optional
        Float16 float inputs and outputs, like ``atcat_fp16.onnx``. Computation stays in float32.
    seed : int, optional
        Seed of ``numpy.random.default_rng``; the same arguments give a byte-identical file.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    ValueError
        If a size is not positive or ``d_model`` is not divisible by ``n_heads``.
    """
    _check_sizes(n_layers, d_model, n_heads, ffn, seq_size, embed_dim)
    g = _GraphBuilder(np.random.default_rng(seed))
    io_type = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    shape: list[str | int] = ["batch", seq_size]
    # `flux` must come first: clients detect the fp16 variant from the first input's type.
    inputs = [
        helper.make_tensor_value_info("flux", io_type, shape),
        helper.make_tensor_value_info("flux_err", io_type, shape),
        helper.make_tensor_value_info("time", io_type, shape),
        helper.make_tensor_value_info("mask", TensorProto.BOOL, shape),
        helper.make_tensor_value_info("channel_index", TensorProto.INT64, shape),
    ]

    last_axis = g.const([-1])

    def as_feature(name: str) -> str:
        # [N, S] (any float type) -> float32 [N, S, 1], clipped so that float16 overflow (inf)
        # cannot produce inf/inf = NaN in the SNR feature below.
        value = g.op("Cast", name, to=TensorProto.FLOAT)
        value = g.op("Clip", value, g.const(-_INPUT_CLIP), g.const(_INPUT_CLIP))
        return g.op("Unsqueeze", value, last_axis)

    flux, flux_err, time = as_feature("flux"), as_feature("flux_err"), as_feature("time")
    # Fluxes at zero point 27.5 span ~1e-1..1e6 and can be negative; the signed log maps them to
    # about +-14. The SNR term couples flux and its error the way a real model would weigh points.
    snr = g.op("Div", flux, g.op("Add", g.op("Abs", flux_err), g.const(1.0)))
    features = [
        g.op("Mul", g.signed_log(flux), g.const(0.25)),
        g.op("Mul", g.signed_log(flux_err), g.const(0.25)),
        g.op("Mul", g.signed_log(snr), g.const(0.25)),
        g.op("Mul", g.signed_log(time), g.const(0.25)),
        *g.time_features(time),
    ]
    n_features = 4 + 2 * len(_TIME_PERIODS_DAYS)
    h = g.linear(g.op("Concat", *features, axis=-1), n_features, d_model, "input_proj")
    band_table = g.weight("band_embedding.weight", 1, (ATCAT_N_BANDS, d_model))
    h = g.op("Add", h, g.op("Gather", band_table, "channel_index", axis=0))

    # Additive bias [N, 1, S, S] = causal (key j > query i) + key padding, built once for all layers.
    causal = np.triu(np.full((seq_size, seq_size), _MASK_BIAS, dtype=np.float32), k=1)
    mask_f = g.op("Cast", "mask", to=TensorProto.FLOAT)
    padding = g.op("Mul", g.op("Sub", g.const(1.0), mask_f), g.const(_MASK_BIAS))
    padding = g.op("Unsqueeze", padding, g.const([1, 2]))
    bias = g.op("Add", padding, g.const(causal[np.newaxis, np.newaxis], "causal_bias"))

    h = g.encoder(h, bias, n_layers=n_layers, d_model=d_model, n_heads=n_heads, ffn=ffn)
    output_proj = g.linear_params(d_model, embed_dim, "output_proj")
    seq = g.apply(h, output_proj)

    # last: gather position sum(mask) - 1 along the sequence axis. Clamped at 0 so an empty window
    # reads position 0 instead of relying on negative-index wrap-around.
    count = g.op("ReduceSum", g.op("Cast", "mask", to=TensorProto.INT64), g.const([1]), keepdims=1)
    last_idx = g.op("Max", g.op("Sub", count, g.const(1)), g.const(0))
    # Heads pool the encoder states, then project (the projection is linear, so this equals
    # pooling the sequence output, and keeps tiny benchmark models tiny).
    hidden_shape = g.op("Concat", g.op("Shape", "mask", end=1), g.const([1, d_model]), axis=0)  # [N, 1, D]
    gather_idx = g.op("Expand", g.op("Unsqueeze", last_idx, last_axis), hidden_shape)
    last = g.apply(g.op("Squeeze", g.op("GatherElements", h, gather_idx, axis=1), g.const([1])), output_proj)

    mean = g.apply(g.masked_mean(h, g.op("Unsqueeze", mask_f, last_axis)), output_proj)

    for value, out in [(last, "last"), (mean, "mean"), (seq, "sequence")]:
        # Exactly one node per graph output; Cast is a no-op copy for the float32 variant but keeps
        # the graph shape identical between the two precisions.
        g.nodes.append(helper.make_node("Cast", [value], [out], name=f"{out}_out", to=io_type))

    outputs = [
        helper.make_tensor_value_info("last", io_type, ["batch", embed_dim]),
        helper.make_tensor_value_info("mean", io_type, ["batch", embed_dim]),
        helper.make_tensor_value_info("sequence", io_type, ["batch", seq_size, embed_dim]),
    ]
    return _save(
        g,
        path,
        graph_name="synthetic_atcat",
        inputs=inputs,
        outputs=outputs,
        metadata={"architecture": "atcat", "n_layers": str(n_layers), "fp16": str(fp16), "seed": str(seed)},
    )


def build_astromer1_sized(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write an Astromer-signature model with Astromer 1's size, for throughput benchmarks.

    2 layers, d_model 256, 4 heads, FFN 128, sequence 200, embedding 256: about 0.66 M parameters
    and 0.37 GFLOP per window.

    Parameters
    ----------
    path : str or os.PathLike
        Destination ``.onnx`` file (overwritten).
    seed : int, optional
        Seed of the random weights.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    return build_astromer(
        path, n_layers=2, d_model=256, n_heads=4, ffn=128, seq_size=200, embed_dim=256, seed=seed
    )


def build_atcat_sized(path: str | os.PathLike[str], seed: int = 0, *, fp16: bool = False) -> Path:
    """Write an ATCAT-signature causal model of the size assumed for benchmarks.

    4 layers, d_model 384, 6 heads, FFN 1536, sequence 243, embedding 384: about 7.1 M parameters
    and 3.9 GFLOP per window.

    Parameters
    ----------
    path : str or os.PathLike
        Destination ``.onnx`` file (overwritten).
    seed : int, optional
        Seed of the random weights.
    fp16 : bool, optional
        Float16 inputs and outputs, like ``atcat_fp16.onnx``.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    return build_atcat(
        path,
        n_layers=4,
        d_model=384,
        n_heads=6,
        ffn=1536,
        seq_size=243,
        embed_dim=384,
        fp16=fp16,
        seed=seed,
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m streamer.embed.synthetic {atcat,astromer} OUT.onnx [--sized]``.

    Writes a random-weight model with the published signature: a stand-in for the real
    weights where the HuggingFace Hub is out of reach (the demo, smoke tests). Its
    embeddings mean nothing.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m streamer.embed.synthetic", description=main.__doc__)
    parser.add_argument("family", choices=["atcat", "astromer"])
    parser.add_argument("output", type=Path)
    parser.add_argument("--sized", action="store_true", help="published architecture sizes (slow)")
    args = parser.parse_args(argv)
    builders: dict[tuple[str, bool], Callable[..., Path]] = {
        ("atcat", False): build_atcat,
        ("atcat", True): build_atcat_sized,
        ("astromer", False): build_astromer,
        ("astromer", True): build_astromer1_sized,
    }
    print(builders[args.family, args.sized](args.output))


if __name__ == "__main__":
    main()
