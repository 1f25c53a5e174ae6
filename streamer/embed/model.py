"""Embedding sessions: an ONNX model plus a reduction, embedding many light curves at once.

The class hierarchy follows ``light_curve.embed``: :class:`EmbeddingSession` (session,
reduction, batching, window cache) -> :class:`SingleBandModel` / :class:`MultiBandModel`
(band handling) -> concrete models that declare their Hub file, sequence size and
per-window pre-processing. Outputs equal the reference's for the same ONNX file.

What this adds for streams is :meth:`EmbeddingSession.embed_many`: the windows of every
light curve (and band) are planned and gathered with vectorised numpy, concatenated,
run through onnxruntime in chunks of ``batch_size`` windows, then split and reduced per
light curve. Every run gets exactly ``batch_size`` windows (the last chunk padded), so a
window's embedding does not depend on its batch, and results are identical, bit for bit,
to calling the model on each light curve.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from enum import IntEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from streamer.embed.cache import WindowCache
from streamer.embed.reduction import (
    MultipleReductions,
    RandomSubsample,
    Reduction,
    gather_windows,
    reduction_from_str,
)

if TYPE_CHECKING:
    from typing import Self

    import onnxruntime as ort
    from numpy.typing import ArrayLike

    from streamer.embed.tensors import InputTensors

#: A light curve as passed to :meth:`EmbeddingSession.embed_many`: the positional arrays
#: of the model's ``__call__`` (band last where the model takes one).
LightCurveArrays = Sequence["ArrayLike"]


class Dim(IntEnum):
    """Axes of the 4-D embedding array ``(BAND, SUBSAMPLE, SEQUENCE, VALUE)``."""

    BAND = 0
    SUBSAMPLE = 1
    SEQUENCE = 2
    VALUE = 3


class InvalidLightCurve(ValueError):
    """A light curve the model cannot embed; ``index`` is its position in the batch."""

    def __init__(self, message: str, index: int | None = None) -> None:
        prefix = "" if index is None else f"light curve #{index}: "
        super().__init__(prefix + message)
        self.index = index


class ModelUnavailable(RuntimeError):
    """The model file could not be obtained (Hub unreachable and not cached)."""


class EmbeddingSession(ABC):
    """Abstract base for ONNX-backed embedding models.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
        Any object with a compatible ``run()`` and ``get_inputs()``.
    reduction : str, list of str, or Reduction
        Strategy mapping variable-length light curves to fixed-length windows.
    reduction_kwargs : dict, optional
        Forwarded to :func:`~streamer.embed.reduction.reduction_from_str` for string
        reductions (e.g. ``rng``).
    batch_size : int, optional
        Windows per ``session.run`` call; ``None`` takes the model's measured default
        (:attr:`default_batch_size`). Large values suit GPUs.
    cache_bytes : int, optional
        Memory budget of the window-embedding cache; 0 (default) disables it.
    """

    hf_repo: str | None = None
    hf_filename: str
    model_outputs: frozenset[str]
    seq_size: int
    #: Names of the numeric light-curve arrays, in ``__call__`` order.
    value_names: tuple[str, ...]
    #: Windows per ``session.run`` that ran fastest on CPU (see ``benchmarks/embed.py``).
    default_batch_size: int = 4
    output: str

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        reduction: str | list[str] | Reduction,
        reduction_kwargs: dict[str, Any] | None = None,
        batch_size: int | None = None,
        cache_bytes: int = 0,
    ) -> None:
        self.session = session
        if not isinstance(reduction, Reduction):
            reduction = reduction_from_str(reduction, **(reduction_kwargs or {}))
        self.reduction = reduction
        self.batch_size = self.default_batch_size if batch_size is None else int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive number of windows, got {batch_size}")
        self.cache = WindowCache(cache_bytes) if cache_bytes else None
        self.model_path: str | None = None
        #: Windows run through onnxruntime, and ``session.run`` calls, since creation.
        self.windows_computed = 0
        self.onnx_runs = 0

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_hf(
        cls, filename: str, *, ort_session_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> Self:
        """Load a model from the HuggingFace Hub.

        Downloads the ONNX file into the Hub cache (``HF_HOME``/``HF_HUB_CACHE``) with
        ``huggingface_hub.hf_hub_download``; with ``HF_HUB_OFFLINE=1`` the cached copy is used.

        Parameters
        ----------
        filename : str
            File inside :attr:`hf_repo`.
        ort_session_kwargs : dict, optional
            Passed to ``onnxruntime.InferenceSession``: ``sess_options``, ``providers``,
            ``provider_options``.
        **kwargs
            Forwarded to the class constructor.

        Raises
        ------
        ModelUnavailable
            If the file is neither cached nor downloadable.
        """
        if cls.hf_repo is None:
            raise ValueError(f"{cls.__name__} has no HuggingFace Hub repository")
        path = hf_model_file(cls.hf_repo, filename)
        return cls.from_path(path, ort_session_kwargs=ort_session_kwargs, **kwargs)

    @classmethod
    def from_path(
        cls, path: str | os.PathLike[str], *, ort_session_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> Self:
        """Load a model from a local ``.onnx`` file.

        Parameters
        ----------
        path : str or path-like
        ort_session_kwargs : dict, optional
            Passed to ``onnxruntime.InferenceSession``.
        **kwargs
            Forwarded to the class constructor.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ModelUnavailable(f"model file {path!r} does not exist")
        session = create_onnx_session(path, **(ort_session_kwargs or {}))
        model = cls(session=session, **kwargs)
        model.model_path = path
        return model

    @cached_property
    def model_sha256(self) -> str | None:
        """SHA-256 of the model file, when loaded from a file (identifies the weights)."""
        if self.model_path is None:
            return None
        digest = hashlib.sha256()
        with open(self.model_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    # -------------------------------------------------------- reference API
    def preprocess_lc(self, *arrays: ArrayLike) -> InputTensors:
        """Convert one light curve (one band, bands already mapped) to model tensors.

        Parameters
        ----------
        *arrays : array-like
            The model's light-curve arrays, e.g. ``time, mag``.

        Returns
        -------
        InputTensors
        """
        names = (*self.value_names, "band")[: len(arrays)]
        columns = self._check_arrays(arrays, names, index=None)
        self._check_finite(columns, [0, columns[0].size])
        plan = self.reduction.plan(np.array([columns[0].size]), self.seq_size)
        return self._window_tensors(*gather_windows(columns, plan, self.seq_size))

    def predict_tensors(self, tensors: InputTensors) -> np.ndarray:
        """Run the model on :meth:`preprocess_lc` output and apply the reduction.

        Returns
        -------
        numpy.ndarray, shape ``(n_subsamples, seq, embed_dim)``
            ``seq`` is 1 for pooled outputs.
        """
        raw = self.run_windows(tensors)
        return self.reduction.reduce_embeddings(raw, tensors, output=self.output)

    # ------------------------------------------------------------ many curves
    def embed_many(self, light_curves: Sequence[LightCurveArrays]) -> np.ndarray:
        """Embed many light curves in one pass: the streaming path.

        Parameters
        ----------
        light_curves : sequence of tuples of array-like
            Each element holds the positional arguments of ``__call__`` (for band-aware
            models the band array last), e.g. ``(time, mag)`` or
            ``(time, flux, flux_err, band)``.

        Returns
        -------
        numpy.ndarray, shape ``(n_curves, n_bands, n_subsamples, seq, embed_dim)``
            Element ``i`` equals ``model(*light_curves[i])``.

        Raises
        ------
        InvalidLightCurve
            (a ``ValueError``) naming the first bad light curve and the problem.
        """
        curves = [self._check_curve(i, lc) for i, lc in enumerate(light_curves)]
        if not curves:
            raise ValueError("embed_many needs at least one light curve")
        n_values = len(self.value_names)
        signatures = [tuple(a.dtype for a in c[:n_values]) for c in curves]
        if len(set(signatures)) == 1:
            return self._embed_same_dtype(curves, np.arange(len(curves)))
        # Pre-processing arithmetic follows the input dtype (as the reference's does), so
        # curves of different dtypes are embedded in separate groups.
        # With random subsampling, one group per curve keeps the generator's draws in
        # call order.
        groups: dict[object, list[int]] = {}
        for i, sig in enumerate(signatures):
            groups.setdefault(i if self._draws_randomly() else sig, []).append(i)
        parts = []
        for members in groups.values():
            idx = np.asarray(members)
            parts.append((idx, self._embed_same_dtype([curves[i] for i in idx], idx)))
        first = parts[0][1]
        out = np.empty((len(curves), *first.shape[1:]), dtype=np.result_type(*(p[1] for p in parts)))
        for idx, emb in parts:
            out[idx] = emb
        return out

    def _draws_randomly(self) -> bool:
        if isinstance(self.reduction, MultipleReductions):
            return any(isinstance(r, RandomSubsample) for r in self.reduction.reductions)
        return isinstance(self.reduction, RandomSubsample)

    def window_tensors(self, light_curves: Sequence[LightCurveArrays]) -> InputTensors:
        """Model inputs of every window of some light curves (of one dtype), in order.

        This is what :meth:`embed_many` feeds to onnxruntime, in chunks of ``batch_size``.
        """
        curves = [self._check_curve(i, lc) for i, lc in enumerate(light_curves)]
        return self._plan_windows(curves, np.arange(len(curves)))[0]

    def _plan_windows(
        self, curves: list[tuple[np.ndarray, ...]], indices: np.ndarray
    ) -> tuple[InputTensors, np.ndarray, int]:
        """Window tensors, the unit of every window, and the number of band groups."""
        columns, lengths, n_groups = self._units(curves, indices)
        empty = np.flatnonzero(lengths == 0)
        if empty.size:
            curve, group = divmod(int(empty[0]), n_groups)
            raise InvalidLightCurve(
                f"no observations in {self._group_name(group)}", index=int(indices[curve])
            )
        plan = self.reduction.plan(lengths, self.seq_size)
        offsets = np.cumsum(lengths) - lengths
        tensors = self._window_tensors(*gather_windows(columns, plan, self.seq_size, offsets))
        return tensors, plan.unit, n_groups

    def _embed_same_dtype(self, curves: list[tuple[np.ndarray, ...]], indices: np.ndarray) -> np.ndarray:
        tensors, unit, n_groups = self._plan_windows(curves, indices)
        raw = self.run_windows(tensors)
        n_units = len(curves) * n_groups
        reduced = self.reduction.reduce(raw, tensors.bool_mask, unit, n_units, output=self.output)
        return reduced.reshape(len(curves), n_groups, *reduced.shape[1:])

    def run_windows(self, tensors: InputTensors) -> np.ndarray:
        """Model output for every window, serving unchanged windows from the cache.

        Returns
        -------
        numpy.ndarray, shape ``(n_windows, seq, embed_dim)``
        """
        if self.cache is None:
            return self._run(tensors)
        keys = self.cache.keys_for(tensors, self.output)
        found: list[np.ndarray | None] = [self.cache.get(k) for k in keys]
        todo: dict[bytes, int] = {}
        for i, value in enumerate(found):
            if value is None and keys[i] not in todo:
                todo[keys[i]] = i
        computed: dict[bytes, np.ndarray] = {}
        if todo:
            fresh = self._run(tensors.take(np.fromiter(todo.values(), dtype=np.int64)))
            for j, key in enumerate(todo):
                computed[key] = fresh[j]
                self.cache.put(key, fresh[j])
        sample = next(v for v in (*computed.values(), *(f for f in found if f is not None)))
        out = np.empty((len(keys), *sample.shape), dtype=sample.dtype)
        for i, key in enumerate(keys):
            value = found[i]
            out[i] = computed[key] if value is None else value
        return out

    def _run(self, tensors: InputTensors) -> np.ndarray:
        feeds = tensors.asdict()
        n = tensors.n_windows
        out: np.ndarray | None = None
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            rows: slice | np.ndarray = slice(start, stop)
            if stop - start < self.batch_size:
                # onnxruntime's kernels round differently for different batch sizes (e.g. its
                # ReduceSum with one row), so every run gets exactly batch_size windows, the
                # last one repeated: a window's output then does not depend on what else is
                # in the batch (replay order, micro-batch size, cache and memo hits).
                rows = np.minimum(np.arange(start, start + self.batch_size), stop - 1)
            (chunk,) = self.session.run([self.output], {k: v[rows] for k, v in feeds.items()})
            chunk = chunk[: stop - start]
            if chunk.ndim == 2:  # pooled outputs have no sequence axis: add SEQUENCE=1
                chunk = chunk[:, np.newaxis, :]
            if out is None:
                out = np.empty((n, *chunk.shape[1:]), dtype=chunk.dtype)
            out[start:stop] = chunk
            self.onnx_runs += 1
        self.windows_computed += n
        assert out is not None, "run on zero windows"
        return out

    # ------------------------------------------------------------- validation
    @property
    def array_names(self) -> tuple[str, ...]:
        """Names of the positional light-curve arrays (band last where taken)."""
        return (*self.value_names, "band") if self._takes_band else self.value_names

    _takes_band = False

    def _check_curve(self, index: int, lc: LightCurveArrays) -> tuple[np.ndarray, ...]:
        names = self.array_names
        if isinstance(lc, np.ndarray) or not isinstance(lc, Sequence):
            raise InvalidLightCurve(
                f"expected a tuple of arrays ({', '.join(names)}), got {type(lc).__name__}", index
            )
        if len(lc) != len(names):
            raise InvalidLightCurve(
                f"expected {len(names)} arrays ({', '.join(names)}), got {len(lc)}", index
            )
        return self._check_arrays(lc, names, index)

    def _check_arrays(
        self, arrays: Sequence[ArrayLike], names: Sequence[str], index: int | None
    ) -> tuple[np.ndarray, ...]:
        out = [np.asarray(a) for a in arrays]
        for k, (a, name) in enumerate(zip(out, names, strict=True)):
            if a.ndim > 1:
                raise InvalidLightCurve(f"{name} must be one-dimensional, got shape {a.shape}", index)
            if k < len(self.value_names) and a.dtype.kind not in "iuf":
                raise InvalidLightCurve(f"{name} must be a real numeric array, got dtype {a.dtype}", index)
        sizes = {a.size for a in out if a.ndim == 1}
        if len(sizes) > 1:
            detail = ", ".join(f"{name}={a.size}" for a, name in zip(out, names, strict=True))
            raise InvalidLightCurve(f"arrays have different lengths: {detail}", index)
        if not sizes or sizes == {0}:
            raise InvalidLightCurve("empty light curve: no observations", index)
        if any(a.ndim == 0 for a in out):
            out = list(np.broadcast_arrays(*out))
        return tuple(out)

    def _check_finite(
        self, columns: Sequence[np.ndarray], bounds: Sequence[int] | np.ndarray, indices: Any = None
    ) -> None:
        for column, name in zip(columns, self.value_names, strict=False):
            if column.dtype.kind != "f":
                continue
            bad = ~np.isfinite(column)
            if bad.any():
                curve = int(np.searchsorted(bounds, np.flatnonzero(bad)[0], side="right") - 1)
                index = None if indices is None else int(indices[curve])
                raise InvalidLightCurve(f"{name} contains NaN or infinite values", index)

    # ----------------------------------------------------------- subclasses
    @abstractmethod
    def _units(
        self, curves: list[tuple[np.ndarray, ...]], indices: np.ndarray
    ) -> tuple[list[np.ndarray], np.ndarray, int]:
        """Split curves into units (curve-major, band-minor).

        Returns the flat columns ordered by unit, the length of every unit and the
        number of band groups.
        """

    @abstractmethod
    def _group_name(self, group: int) -> str:
        """Human-readable name of band group ``group``, for errors."""

    @abstractmethod
    def _window_tensors(self, *padded: np.ndarray) -> InputTensors:
        """Model inputs from zero-padded ``(n_windows, seq_size)`` columns and the mask."""

    def _flat_columns(
        self, curves: list[tuple[np.ndarray, ...]], indices: np.ndarray
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Concatenate the curves' arrays; check values are finite."""
        lengths = np.fromiter((c[0].size for c in curves), dtype=np.int64, count=len(curves))
        columns = [np.concatenate([c[k] for c in curves]) for k in range(len(curves[0]))]
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        self._check_finite(columns, bounds, indices)
        return columns, lengths


class SingleBandModel(EmbeddingSession, ABC):
    """Model that embeds one photometric band at a time.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
    bands : sequence of str or int, optional
        Ordered band labels to embed, each independently, stacked along
        :attr:`Dim.BAND`. ``None`` treats the whole light curve as one band.
    reduction : str, list of str, or Reduction
        Defaults to ``"non-overlapping-windows"``.
    reduction_kwargs : dict, optional
    **engine_kwargs
        ``batch_size``, ``cache_bytes``: see :class:`EmbeddingSession`.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        bands: Sequence[str | int] | None = None,
        reduction: str | list[str] | Reduction = "non-overlapping-windows",
        reduction_kwargs: dict[str, Any] | None = None,
        **engine_kwargs: Any,
    ) -> None:
        super().__init__(session, reduction=reduction, reduction_kwargs=reduction_kwargs, **engine_kwargs)
        self.bands = None if bands is None else list(bands)

    def __call__(self, *arrays: ArrayLike, band: ArrayLike | None = None) -> np.ndarray:
        """Embed one light curve.

        Returns
        -------
        numpy.ndarray, shape ``(n_bands, n_subsamples, seq, embed_dim)``

        Raises
        ------
        ValueError
            If ``band`` is given without ``bands`` or vice versa, or the input is invalid.
        """
        if (band is None) != (self.bands is None):
            raise ValueError(
                "band array must be provided with values specified by `bands` class constructor "
                f"argument: {self.bands}"
            )
        lc = arrays if band is None else (*arrays, band)
        return self.embed_many([lc])[0]

    @property
    def _takes_band(self) -> bool:  # type: ignore[override]
        return self.bands is not None

    def _group_name(self, group: int) -> str:
        return "the light curve" if self.bands is None else f"band {self.bands[group]!r}"

    def _units(
        self, curves: list[tuple[np.ndarray, ...]], indices: np.ndarray
    ) -> tuple[list[np.ndarray], np.ndarray, int]:
        columns, lengths = self._flat_columns(curves, indices)
        if self.bands is None:
            return columns, lengths, 1
        *values, band = columns
        n_groups = len(self.bands)
        curve_of_point = np.repeat(np.arange(len(curves)), lengths)
        picked, unit = [], []
        for g, label in enumerate(self.bands):
            selected = np.flatnonzero(_equals(band, label))
            picked.append(selected)
            unit.append(curve_of_point[selected] * n_groups + g)
        order_units = np.concatenate(unit)
        order = np.argsort(order_units, kind="stable")
        points = np.concatenate(picked)[order]
        unit_lengths = np.bincount(order_units, minlength=len(curves) * n_groups)
        return [v[points] for v in values], unit_lengths, n_groups


class MultiBandModel(EmbeddingSession, ABC):
    """Model that receives all photometric bands in one forward pass.

    ``band_groups`` maps user band labels to the model's integer bands:

    * ``None`` — labels already are model integers ``0 .. n_model_bands-1``; one group.
    * a dict ``{label: model_band}`` — mapped, one group.
    * a list of such dicts — one independent group each (labels unique across the list),
      stacked along :attr:`Dim.BAND`.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
    band_groups : Mapping, list of Mapping, or None
    allow_extra_bands : bool
        If ``False`` (default), unknown band labels raise :exc:`ValueError`; if ``True``,
        observations with unknown labels are ignored. (With ``band_groups=None`` the
        reference would pass unknown integers on to the model; here they are ignored
        too, so they never reach onnxruntime.)
    reduction : str, list of str, or Reduction
    reduction_kwargs : dict, optional
    **engine_kwargs
        ``batch_size``, ``cache_bytes``: see :class:`EmbeddingSession`.
    """

    n_model_bands: int
    _takes_band = True

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        band_groups: Mapping[Any, int] | Sequence[Mapping[Any, int]] | None = None,
        allow_extra_bands: bool = False,
        reduction: str | list[str] | Reduction = "non-overlapping-windows",
        reduction_kwargs: dict[str, Any] | None = None,
        **engine_kwargs: Any,
    ) -> None:
        super().__init__(session, reduction=reduction, reduction_kwargs=reduction_kwargs, **engine_kwargs)
        self.band_groups = band_groups
        self.allow_extra_bands = allow_extra_bands
        groups: list[Mapping[Any, int]]
        if band_groups is None:
            groups = [{b: b for b in range(self.n_model_bands)}]
        elif isinstance(band_groups, Mapping):
            groups = [band_groups]
        else:
            groups = list(band_groups)
        seen: dict[Any, int] = {}
        duplicates = []
        for group in groups:
            for label in group:
                if label in seen:
                    duplicates.append(label)
                seen[label] = seen.get(label, 0) + 1
        if duplicates:
            raise ValueError(
                "If ``band_groups`` is a list ``dict[input_band, model_map]``, then all ``input_band``s "
                f"must be unique across the list. Duplicate keys found: {duplicates}"
            )
        values = {v for group in groups for v in group.values()}
        invalid = sorted(values - set(range(self.n_model_bands)))
        if invalid:
            raise ValueError(
                "``band_groups`` values must be model bands "
                f"0..{self.n_model_bands - 1}. Invalid values found: {invalid}"
            )
        #: label -> (group index, model band)
        self._label_map = {label: (g, int(m)) for g, group in enumerate(groups) for label, m in group.items()}
        self._n_groups = len(groups)
        self.defined_input_bands = set(self._label_map)

    def __call__(self, *arrays: ArrayLike, band: ArrayLike) -> np.ndarray:
        """Embed one light curve.

        Returns
        -------
        numpy.ndarray, shape ``(n_band_groups, n_subsamples, seq, embed_dim)``
        """
        return self.embed_many([(*arrays, band)])[0]

    def _group_name(self, group: int) -> str:
        if self.band_groups is None or isinstance(self.band_groups, Mapping):
            return "the light curve (after band selection)"
        return f"band group {group} {sorted(map(str, self.band_groups[group]))}"

    def _units(
        self, curves: list[tuple[np.ndarray, ...]], indices: np.ndarray
    ) -> tuple[list[np.ndarray], np.ndarray, int]:
        columns, lengths = self._flat_columns(curves, indices)
        *values, band = columns
        labels, inverse = np.unique(band, return_inverse=True)
        group_of_label = np.full(labels.size, -1, dtype=np.int64)
        model_band_of_label = np.zeros(labels.size, dtype=np.int64)
        for k, label in enumerate(labels.tolist()):
            found = self._label_map.get(label)
            if found is not None:
                group_of_label[k], model_band_of_label[k] = found
        unknown = group_of_label < 0
        if unknown.any() and not self.allow_extra_bands:
            bad_point = int(np.flatnonzero(unknown[inverse])[0])
            curve = int(np.searchsorted(np.cumsum(lengths), bad_point, side="right"))
            raise InvalidLightCurve(
                "all ``band`` values must be in the defined input bands (keys of ``band_groups``, or "
                "0..5 when ``band_groups`` is None). "
                f"Invalid values found: {sorted(map(str, labels[unknown].tolist()))}",
                index=int(indices[curve]),
            )
        group = group_of_label[inverse]
        curve_of_point = np.repeat(np.arange(len(curves)), lengths)
        kept = np.flatnonzero(group >= 0)
        unit = curve_of_point[kept] * self._n_groups + group[kept]
        order = kept[np.argsort(unit, kind="stable")]
        unit_lengths = np.bincount(unit, minlength=len(curves) * self._n_groups)
        model_band = model_band_of_label[inverse]
        return [*(v[order] for v in values), model_band[order]], unit_lengths, self._n_groups


def _equals(band: np.ndarray, label: Any) -> np.ndarray:
    """Element-wise ``band == label`` that is all-False for incomparable types."""
    eq = band == label
    if np.ndim(eq) == 0:
        return np.zeros(band.shape, dtype=bool)
    return np.asarray(eq, dtype=bool)


def hf_model_file(repo_id: str, filename: str) -> str:
    """Path of a Hub model file, downloaded into the Hub cache if needed.

    Raises
    ------
    ImportError
        If ``huggingface_hub`` is not installed.
    ModelUnavailable
        If the Hub cannot be reached and the file is not cached.
    """
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError(
            "huggingface_hub is required to download models: pip install huggingface-hub"
        ) from exc
    try:
        return hf_hub_download(repo_id=repo_id, filename=filename)
    except Exception as exc:
        url = f"https://huggingface.co/{repo_id}/resolve/main/{filename}"
        raise ModelUnavailable(
            f"cannot get {filename!r} of {repo_id!r} from the HuggingFace Hub and it is not in the local "
            f"Hub cache ({type(exc).__name__}: {exc}). Download {url} elsewhere and load it from a local "
            "path (STREAMER_MODEL_FILE / --model-file / from_path)."
        ) from exc


def create_onnx_session(model_path: str, **kwargs: Any) -> ort.InferenceSession:
    """``onnxruntime.InferenceSession`` for a file; ``kwargs`` go to its constructor.

    Raises
    ------
    ModelUnavailable
        A requested execution provider did not start: onnxruntime-gpu, for one, logs a
        warning and runs on the CPU when it cannot load CUDA or cuDNN; a GPU deployment
        that silently ran on its pod's few cores would fall behind the stream.
    """
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError(
            "An ONNX runtime is required: pip install onnxruntime (or onnxruntime-gpu for CUDA)"
        ) from exc
    session = onnxruntime.InferenceSession(model_path, **kwargs)
    requested = [p if isinstance(p, str) else p[0] for p in kwargs.get("providers") or ()]
    started = session.get_providers()
    missing = [name for name in requested if name not in started]
    if missing:
        raise ModelUnavailable(
            f"onnxruntime did not start {', '.join(missing)} for {model_path} (the session came up "
            f"on {', '.join(started)}); onnxruntime's warning above says why, e.g. CUDA or cuDNN "
            "libraries not found (LD_LIBRARY_PATH) or no GPU visible"
        )
    return session
