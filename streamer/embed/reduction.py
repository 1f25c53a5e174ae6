"""Reductions: how a variable-length light curve becomes fixed-length model windows.

Each reduction answers two questions, the same ones as ``light_curve.embed``:
which observations go into which window (:meth:`Reduction.plan`) and how per-window
embeddings become one embedding per light curve (:meth:`Reduction.reduce`).

Unlike the reference, planning works on many light curves ("units": one light curve, or
one band of it) at once: it returns index arrays, so that the windows of thousands of
light curves are gathered with a handful of numpy calls instead of Python loops.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import ArrayLike

    from streamer.embed.tensors import InputTensors


@dataclass(frozen=True)
class WindowPlan:
    """Which observation of which unit lands at which window position.

    Attributes
    ----------
    unit : numpy.ndarray, shape ``(n_windows,)``
        Unit index of every window; windows of one unit are consecutive, in unit order.
    point : numpy.ndarray, shape ``(n_points,)``
        Index of each selected observation within its unit.
    window : numpy.ndarray, shape ``(n_points,)``
        Window that each selected observation goes to.
    position : numpy.ndarray, shape ``(n_points,)``
        Position of the observation inside its window (left-aligned, no gaps).
    """

    unit: np.ndarray
    point: np.ndarray
    window: np.ndarray
    position: np.ndarray

    @property
    def n_windows(self) -> int:
        return int(self.unit.size)

    @classmethod
    def contiguous(cls, unit: np.ndarray, start: np.ndarray, count: np.ndarray) -> WindowPlan:
        """Windows made of ``count`` consecutive observations from ``start`` of their unit."""
        count = count.astype(np.int64, copy=False)
        n_points = int(count.sum())
        window = np.repeat(np.arange(unit.size, dtype=np.int64), count)
        first_of_window = np.cumsum(count) - count
        position = np.arange(n_points, dtype=np.int64) - np.repeat(first_of_window, count)
        point = np.repeat(start.astype(np.int64, copy=False), count) + position
        return cls(unit=unit.astype(np.int64, copy=False), point=point, window=window, position=position)

    @classmethod
    def concatenate(cls, plans: Sequence[WindowPlan]) -> WindowPlan:
        """Join plans of disjoint window sets, renumbering the windows of later plans."""
        offsets = np.cumsum([0] + [p.n_windows for p in plans[:-1]])
        return cls(
            unit=np.concatenate([p.unit for p in plans]),
            point=np.concatenate([p.point for p in plans]),
            window=np.concatenate([p.window + off for p, off in zip(plans, offsets, strict=True)]),
            position=np.concatenate([p.position for p in plans]),
        )

    def windows_per_unit(self, n_units: int) -> np.ndarray:
        return np.bincount(self.unit, minlength=n_units)


class Reduction(ABC):
    """Strategy mapping a variable-length light curve to fixed-length windows.

    Subclasses implement :meth:`subsample_lc` (windowing of one light curve, the
    reference's interface), :meth:`plan` (the same for many units at once) and
    :meth:`reduce_embeddings`.
    """

    def preprocess_lc(self, *arrays: ArrayLike, seq_size: int) -> tuple[np.ndarray, ...]:
        """Subsample, zero-pad and mask one light curve.

        Parameters
        ----------
        *arrays : array-like
            1-D arrays of equal length (e.g. time, magnitude).
        seq_size : int
            Window length; shorter windows are zero-padded.

        Returns
        -------
        tuple of numpy.ndarray
            One ``(n_windows, seq_size)`` array per input, then the boolean mask.

        Raises
        ------
        ValueError
            If the inputs are not one-dimensional.
        """
        columns = np.broadcast_arrays(*(np.asarray(a) for a in arrays))
        if columns[0].ndim != 1:
            raise ValueError(f"Inputs must be single dimensional, {columns[0].ndim} is provided")
        plan = self.plan(np.array([columns[0].size]), seq_size)
        return gather_windows(columns, plan, seq_size)

    def subsample_lc(self, *arrays: np.ndarray, seq_size: int) -> list[tuple[np.ndarray, ...]]:
        """Split or subsample one light curve into windows of at most ``seq_size`` points.

        Parameters
        ----------
        *arrays : numpy.ndarray
            1-D arrays of equal length.
        seq_size : int
            Maximum number of observations per window.

        Returns
        -------
        list of tuple of numpy.ndarray
            One tuple of arrays (one per input) per window.
        """
        plan = self.plan(np.array([arrays[0].size]), seq_size)
        return [
            tuple(np.asarray(a)[plan.point[plan.window == w]] for a in arrays) for w in range(plan.n_windows)
        ]

    @abstractmethod
    def plan(self, lengths: np.ndarray, seq_size: int) -> WindowPlan:
        """Plan the windows of many units at once.

        Parameters
        ----------
        lengths : numpy.ndarray of int, shape ``(n_units,)``
            Number of observations in each unit.
        seq_size : int
            Window length.

        Returns
        -------
        WindowPlan
        """

    @abstractmethod
    def reduce_embeddings(self, embeddings: np.ndarray, tensors: InputTensors, *, output: str) -> np.ndarray:
        """Aggregate the window embeddings of one light curve.

        Parameters
        ----------
        embeddings : numpy.ndarray, shape ``(n_windows, seq, embed_dim)``
            ``seq`` is 1 for pooled outputs and the model's sequence length for ``"sequence"``.
        tensors : InputTensors
            The model inputs; ``tensors.bool_mask`` marks valid positions.
        output : str
            Model output name, which selects the aggregation.

        Returns
        -------
        numpy.ndarray, shape ``(n_subsamples, seq, embed_dim)``
        """

    def reduce(
        self, embeddings: np.ndarray, bool_mask: np.ndarray, unit: np.ndarray, n_units: int, *, output: str
    ) -> np.ndarray:
        """Aggregate the window embeddings of many units at once.

        Parameters
        ----------
        embeddings : numpy.ndarray, shape ``(n_windows, seq, embed_dim)``
        bool_mask : numpy.ndarray, shape ``(n_windows, seq_size)``
        unit : numpy.ndarray, shape ``(n_windows,)``
            Unit of every window (as in :attr:`WindowPlan.unit`).
        n_units : int
        output : str

        Returns
        -------
        numpy.ndarray, shape ``(n_units, n_subsamples, seq, embed_dim)``
        """
        # Single-subsample strategies (and lists of them) keep every window: one per
        # strategy, so the windows of a unit are its subsamples.
        return embeddings.reshape(n_units, -1, *embeddings.shape[1:])


class SingleSubsampleReduction(Reduction, ABC):
    """Base for strategies that produce exactly one window per light curve."""

    def reduce_embeddings(self, embeddings: np.ndarray, tensors: InputTensors, *, output: str) -> np.ndarray:
        """Return the embeddings unchanged: one window needs no aggregation."""
        return embeddings

    def single_subsample_lc(self, *arrays: np.ndarray, seq_size: int) -> tuple[np.ndarray, ...]:
        """Return the one window of at most ``seq_size`` observations of a light curve."""
        return self.subsample_lc(*arrays, seq_size=seq_size)[0]

    def plan(self, lengths: np.ndarray, seq_size: int) -> WindowPlan:
        lengths = np.asarray(lengths, dtype=np.int64)
        start = self.window_start(lengths, seq_size)
        count = np.minimum(lengths - start, seq_size)
        return WindowPlan.contiguous(np.arange(lengths.size), start, count)

    def window_start(self, lengths: np.ndarray, seq_size: int) -> np.ndarray:
        """First observation of the window of each unit (contiguous strategies)."""
        raise NotImplementedError


class Beginning(SingleSubsampleReduction):
    """Select the chronologically first ``seq_size`` observations of the light curve."""

    def window_start(self, lengths: np.ndarray, seq_size: int) -> np.ndarray:
        return np.zeros_like(lengths)


class End(SingleSubsampleReduction):
    """Select the chronologically last ``seq_size`` observations of the light curve."""

    def window_start(self, lengths: np.ndarray, seq_size: int) -> np.ndarray:
        return np.maximum(lengths - seq_size, 0)


class Middle(SingleSubsampleReduction):
    """Select the ``seq_size`` observations centred on the midpoint of the light curve.

    The centre index is ``len // 2``; the window is shifted toward the edges when there
    are fewer than ``seq_size`` observations on one side.
    """

    def window_start(self, lengths: np.ndarray, seq_size: int) -> np.ndarray:
        return np.maximum(0, np.minimum(lengths // 2 - seq_size // 2, lengths - seq_size))


class RandomSubsample(SingleSubsampleReduction):
    """Draw ``seq_size`` observations uniformly at random without replacement, in time order.

    Parameters
    ----------
    rng : int, numpy.random.Generator, or None
        Seed or generator for reproducible sampling. Units are drawn in order, one
        ``rng.choice`` per unit longer than ``seq_size``, exactly as repeated calls of the
        reference would, so a shared seed gives the same subsamples.
    """

    def __init__(self, *, rng: int | np.random.Generator | None) -> None:
        self.rng = np.random.default_rng(rng)

    def draw(self, length: int, seq_size: int) -> np.ndarray:
        """Indices of the observations kept from a unit of ``length`` points."""
        if length <= seq_size:
            return np.arange(length, dtype=np.int64)
        indices = self.rng.choice(length, size=seq_size, replace=False)
        indices.sort()
        return indices.astype(np.int64, copy=False)

    def plan(self, lengths: np.ndarray, seq_size: int) -> WindowPlan:
        points = [self.draw(int(n), seq_size) for n in lengths]
        return _plan_from_indices(points, np.arange(len(points)))


class NonOverlappingWindows(Reduction):
    """Split the light curve into consecutive non-overlapping windows of ``seq_size`` points.

    A light curve of length *L* yields ``ceil(L / seq_size)`` windows, the last one
    zero-padded. Pooled outputs are averaged over windows; the ``"sequence"`` output is a
    masked mean over windows at each position.
    """

    def plan(self, lengths: np.ndarray, seq_size: int) -> WindowPlan:
        lengths = np.asarray(lengths, dtype=np.int64)
        n_windows = -(-lengths // seq_size)
        unit = np.repeat(np.arange(lengths.size, dtype=np.int64), n_windows)
        first_window = np.cumsum(n_windows) - n_windows
        start = (np.arange(unit.size, dtype=np.int64) - np.repeat(first_window, n_windows)) * seq_size
        count = np.minimum(lengths[unit] - start, seq_size)
        return WindowPlan.contiguous(unit, start, count)

    def reduce_embeddings(self, embeddings: np.ndarray, tensors: InputTensors, *, output: str) -> np.ndarray:
        """Mean over windows (pooled outputs) or masked mean per position (``"sequence"``)."""
        unit = np.zeros(embeddings.shape[0], dtype=np.int64)
        return self.reduce(embeddings, tensors.bool_mask, unit, 1, output=output)[0]

    def reduce(
        self, embeddings: np.ndarray, bool_mask: np.ndarray, unit: np.ndarray, n_units: int, *, output: str
    ) -> np.ndarray:
        counts = np.bincount(unit, minlength=n_units)
        starts = np.cumsum(counts) - counts
        if output != "sequence":
            # np.mean, as the reference calls it: float16 windows are summed in float32, then
            # divided by the count and rounded back to float16.
            acc = np.dtype(np.float32) if embeddings.dtype == np.float16 else embeddings.dtype
            sums = _sum_windows(embeddings, starts, counts, acc)
            means = np.true_divide(sums, counts.astype(acc)[:, np.newaxis, np.newaxis])
            return means.astype(embeddings.dtype, copy=False)[:, np.newaxis]
        masked = embeddings * bool_mask[:, :, np.newaxis]
        window_sum = _sum_windows(masked, starts, counts, masked.dtype)
        n_valid = np.maximum(np.add.reduceat(bool_mask.astype(np.int64), starts, axis=0), 1)
        # The reference divides by an integer count array, which promotes to float64.
        return (window_sum / n_valid[:, :, np.newaxis])[:, np.newaxis]


def _sum_windows(values: np.ndarray, starts: np.ndarray, counts: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Sum of each unit's consecutive windows, in the order of ``np.sum(axis=0)``.

    The reference reduces with ``np.mean`` / ``np.sum`` over the window axis, which add the
    windows one after another onto +0.0. ``np.add.reduceat`` adds them in another order
    (``w0 + (w1 + w2 + ...)``) and keeps a lone ``-0.0``, so it differs in the last bit
    from three windows on.
    """
    out = np.zeros((counts.size, *values.shape[1:]), dtype=dtype)
    for k in range(int(counts.max(initial=0))):
        units = np.flatnonzero(counts > k)
        if units.size == counts.size:
            out += values[starts + k]  # every unit has a k-th window (always so for k = 0)
        else:
            out[units] += values[starts[units] + k]
    return out


class MultipleReductions(Reduction):
    """Apply several single-window strategies; one embedding per strategy, stacked.

    Parameters
    ----------
    reductions : list of SingleSubsampleReduction
        Ordered strategies.

    Raises
    ------
    ValueError
        If an element is not a :class:`SingleSubsampleReduction`.
    """

    def __init__(self, reductions: list[SingleSubsampleReduction]) -> None:
        for r in reductions:
            if not isinstance(r, SingleSubsampleReduction):
                raise ValueError(
                    f"Reduction '{r}' is not a subsampling reduction; "
                    "currently only subsampling reductions can be used in multiple reductions"
                )
        self.reductions = list(reductions)

    @classmethod
    def from_strings(cls, reductions: list[str], **kwargs: Any) -> MultipleReductions:
        """Build from strategy names; an integer ``rng`` seed becomes one shared generator.

        Sharing one generator (rather than re-seeding each strategy) gives independent
        draws per strategy, as in the reference.
        """
        if "rng" in kwargs:
            kwargs["rng"] = np.random.default_rng(kwargs["rng"])
        built = [reduction_from_str(s, **kwargs) for s in reductions]
        return cls(reductions=built)  # type: ignore[arg-type]

    def reduce_embeddings(self, embeddings: np.ndarray, tensors: InputTensors, *, output: str) -> np.ndarray:
        """Return the embeddings unchanged: one per strategy, already stacked."""
        return embeddings

    def plan(self, lengths: np.ndarray, seq_size: int) -> WindowPlan:
        lengths = np.asarray(lengths, dtype=np.int64)
        n_random = sum(isinstance(r, RandomSubsample) for r in self.reductions)
        if n_random > 1:
            # Several random strategies may share a generator: draw unit by unit and
            # strategy by strategy, the order of the reference's calls.
            points, units = [], []
            for u, n in enumerate(lengths):
                for r in self.reductions:
                    points.append(r.plan(np.array([n]), seq_size).point)
                    units.append(u)
            return _plan_from_indices(points, np.asarray(units, dtype=np.int64))
        plans = [r.plan(lengths, seq_size) for r in self.reductions]
        joined = WindowPlan.concatenate(plans)
        # Reorder windows unit-major, strategy-minor (stable sort keeps strategy order).
        order = np.argsort(joined.unit, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        return WindowPlan(
            unit=joined.unit[order], point=joined.point, window=rank[joined.window], position=joined.position
        )


def _plan_from_indices(points: Sequence[np.ndarray], unit: np.ndarray) -> WindowPlan:
    """Plan from explicit per-window observation indices."""
    counts = np.array([p.size for p in points], dtype=np.int64)
    plan = WindowPlan.contiguous(unit, np.zeros_like(counts), counts)
    point = np.concatenate(points) if points else np.zeros(0, dtype=np.int64)
    return WindowPlan(unit=plan.unit, point=point, window=plan.window, position=plan.position)


def gather_windows(
    columns: Sequence[np.ndarray],
    plan: WindowPlan,
    seq_size: int,
    unit_offsets: np.ndarray | None = None,
) -> tuple[np.ndarray, ...]:
    """Scatter observations into zero-padded ``(n_windows, seq_size)`` arrays.

    Parameters
    ----------
    columns : sequence of numpy.ndarray
        Flat arrays holding all units one after another.
    plan : WindowPlan
    seq_size : int
    unit_offsets : numpy.ndarray, optional
        Index in ``columns`` of each unit's first observation (default: one unit at 0).

    Returns
    -------
    tuple of numpy.ndarray
        One padded array per column (same dtype), then the boolean mask.
    """
    source = plan.point if unit_offsets is None else unit_offsets[plan.unit[plan.window]] + plan.point
    n_cells = plan.n_windows * seq_size
    # One flat destination index serves every column; 1-D fancy indexing is several times
    # faster than 2-D, and a source that is already in order needs no gather at all.
    dest = plan.window * seq_size + plan.position
    in_order = source.size == 0 or (
        source[0] == 0 and source[-1] == source.size - 1 and bool(np.all(np.diff(source) == 1))
    )
    out = []
    for column in columns:
        padded = np.zeros(n_cells, dtype=column.dtype)
        padded[dest] = column[: source.size] if in_order else column[source]
        out.append(padded.reshape(plan.n_windows, seq_size))
    mask = np.zeros(n_cells, dtype=bool)
    mask[dest] = True
    return (*out, mask.reshape(plan.n_windows, seq_size))


def reduction_from_str(s: str | list[str], **kwargs: Any) -> Reduction:
    """Instantiate a reduction from its name, or a list of names.

    Parameters
    ----------
    s : str or list of str
        ``"beginning"``, ``"end"``, ``"middle"``, ``"random-subsample"`` or
        ``"non-overlapping-windows"`` (case-insensitive, ``_`` accepted for ``-``). A list
        of more than one name gives :class:`MultipleReductions`.
    **kwargs
        ``rng`` for ``"random-subsample"``.

    Raises
    ------
    ValueError
        If a name is unknown, or ``rng`` is missing for ``"random-subsample"``.
    """
    if isinstance(s, list):
        if len(s) != 1:
            return MultipleReductions.from_strings(s, **kwargs)
        s = s[0]
    name = s.lower().replace("_", "-")
    if name == "beginning":
        return Beginning()
    if name == "end":
        return End()
    if name == "middle":
        return Middle()
    if name == "random-subsample":
        if "rng" not in kwargs:
            raise ValueError("rng must be provided for random subsample reduction")
        return RandomSubsample(rng=kwargs["rng"])
    if name == "non-overlapping-windows":
        return NonOverlappingWindows()
    raise ValueError(
        f"Unknown reduction '{s}'; expected one of beginning, end, middle, random-subsample, "
        "non-overlapping-windows"
    )
