"""Where the heavy linear algebra runs: numpy (the default) or PyTorch on CPU or CUDA, float64 always.

Every backend method takes and returns numpy float64 arrays, so the estimators stay plain numpy
code; a backend replaces only the expensive kernels: the block-wise centred Gram matrix
(O(N D²)), the eigendecompositions and SPD solves / log-determinants (O(D³)), the N x D x k
products and the streaming accumulators of :class:`~estimators.StreamingStatistics`.

PyTorch is optional: it is imported only when a torch backend is built, so ``estimators``
imports and works without it.

>>> from estimators import Statistics
>>> Statistics([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0], [3.0, 1.0]], [0, 0, 1, 1]).backend.name
'numpy'
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

import numpy as np
import scipy.linalg.blas
from numpy.typing import NDArray

from ._linalg import logdet_spd, solve_spd, symmetrize

__all__ = ["Backend", "NumpyBackend", "TorchBackend", "get_backend", "use_backend", "BACKENDS"]

BACKENDS = ("numpy", "torch")

#: The backend (and device) that ``Statistics`` uses when none is passed; set by :func:`use_backend`.
_DEFAULT: ContextVar[tuple[str, str | None]] = ContextVar("estimators_backend", default=("numpy", None))


class Backend(Protocol):
    """The operations a backend provides (numpy float64 in, numpy float64 out)."""

    name: str
    device: str

    def centered_gram(
        self, features: NDArray[np.float64], mean: NDArray[np.float64], block_size: int
    ) -> NDArray[np.float64]: ...

    def kernel(self, features: NDArray[np.float64]) -> NDArray[np.float64]: ...

    def eigh(self, matrix: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]: ...

    def dot(self, features: NDArray[np.float64], matrix: NDArray[np.float64]) -> NDArray[np.float64]: ...

    def centered_dot(
        self, features: NDArray[np.float64], mean: NDArray[np.float64], matrix: NDArray[np.float64]
    ) -> NDArray[np.float64]: ...

    def solve_spd(self, matrix: NDArray[np.float64], rhs: NDArray[np.float64]) -> NDArray[np.float64]: ...

    def logdet_spd(self, matrix: NDArray[np.float64]) -> float: ...

    def small_gram(self, block: NDArray[np.float64]) -> NDArray[np.float64]: ...

    def weighted_class_scatter(
        self,
        features: NDArray[np.float64],
        mean: NDArray[np.float64],
        labels: NDArray[np.intp],
        offsets: NDArray[np.float64],
        weights: NDArray[np.float64],
        block_size: int,
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]: ...

    def new_scatter(self, dim: int) -> Any: ...

    def syrk_update(self, scatter: Any, block: NDArray[np.float64]) -> Any: ...

    def rank1_update(self, scatter: Any, vector: NDArray[np.float64], alpha: float) -> Any: ...

    def symv(self, scatter: Any, vector: NDArray[np.float64]) -> NDArray[np.float64]: ...

    def add_scatter(self, scatter: Any, matrix: NDArray[np.float64]) -> Any: ...

    def scatter_to_numpy(self, scatter: Any) -> NDArray[np.float64]: ...


class NumpyBackend:
    """numpy / scipy (the BLAS and LAPACK that numpy links). The reference for every other backend."""

    name = "numpy"
    device = "cpu"

    def centered_gram(
        self, features: NDArray[np.float64], mean: NDArray[np.float64], block_size: int
    ) -> NDArray[np.float64]:
        """(F - μ)ᵀ(F - μ) accumulated over row blocks held in one reused buffer."""
        n, d = features.shape
        gram = np.zeros((d, d))
        buffer = np.empty((min(block_size, n), d))
        for start in range(0, n, block_size):
            stop = min(start + block_size, n)
            block = buffer[: stop - start]
            np.subtract(features[start:stop], mean, out=block)
            gram += block.T @ block  # numpy dispatches Aᵀ·A to BLAS syrk
        return symmetrize(gram)

    def kernel(self, features: NDArray[np.float64]) -> NDArray[np.float64]:
        return symmetrize(features @ features.T)

    def eigh(self, matrix: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        values, vectors = np.linalg.eigh(matrix)
        return values, vectors

    def dot(self, features: NDArray[np.float64], matrix: NDArray[np.float64]) -> NDArray[np.float64]:
        return features @ matrix

    def centered_dot(
        self, features: NDArray[np.float64], mean: NDArray[np.float64], matrix: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        return features @ matrix - mean @ matrix

    def solve_spd(self, matrix: NDArray[np.float64], rhs: NDArray[np.float64]) -> NDArray[np.float64]:
        return solve_spd(matrix, rhs)

    def logdet_spd(self, matrix: NDArray[np.float64]) -> float:
        return logdet_spd(matrix)

    def small_gram(self, block: NDArray[np.float64]) -> NDArray[np.float64]:
        """The smaller of B Bᵀ and BᵀB (equal non-zero spectra)."""
        return block @ block.T if block.shape[0] < block.shape[1] else block.T @ block

    def weighted_class_scatter(
        self,
        features: NDArray[np.float64],
        mean: NDArray[np.float64],
        labels: NDArray[np.intp],
        offsets: NDArray[np.float64],
        weights: NDArray[np.float64],
        block_size: int,
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Σ_i w_i² z_i z_iᵀ and the per-class sums of w_i z_i for z_i = f_i - μ - offsets[y_i]."""
        import scipy.sparse

        n, d = features.shape
        n_classes = offsets.shape[0]
        second_moment = np.zeros((d, d))
        sums = np.zeros((n_classes, d))
        buffer = np.empty((min(block_size, n), d))
        for start in range(0, n, block_size):
            stop = min(start + block_size, n)
            block = buffer[: stop - start]
            np.subtract(features[start:stop], mean, out=block)
            y = labels[start:stop]
            block -= offsets[y]
            block *= weights[start:stop, None]
            second_moment += block.T @ block
            membership = scipy.sparse.csr_matrix((np.ones(y.size), (y, np.arange(y.size))), shape=(n_classes, y.size))
            sums += membership @ block
        return second_moment, sums

    # -- streaming accumulators: the upper triangle of a Fortran-ordered matrix, updated in place --
    def new_scatter(self, dim: int) -> NDArray[np.float64]:
        return np.zeros((dim, dim), order="F")

    def syrk_update(self, scatter: NDArray[np.float64], block: NDArray[np.float64]) -> NDArray[np.float64]:
        """scatter += blockᵀ block (upper triangle only: half the flops of a product, no temporary)."""
        block = np.ascontiguousarray(block)
        return scipy.linalg.blas.dsyrk(1.0, block.T, beta=1.0, c=scatter, trans=0, lower=0, overwrite_c=1)

    def rank1_update(
        self, scatter: NDArray[np.float64], vector: NDArray[np.float64], alpha: float
    ) -> NDArray[np.float64]:
        return scipy.linalg.blas.dsyr(alpha, vector, a=scatter, lower=0, overwrite_a=1)

    def symv(self, scatter: NDArray[np.float64], vector: NDArray[np.float64]) -> NDArray[np.float64]:
        return scipy.linalg.blas.dsymv(1.0, scatter, vector, lower=0)

    def add_scatter(self, scatter: NDArray[np.float64], matrix: NDArray[np.float64]) -> NDArray[np.float64]:
        """scatter += matrix (a full symmetric matrix, e.g. another accumulator's ``scatter_to_numpy``)."""
        scatter += np.triu(matrix)  # only the upper triangle is ever read
        return scatter

    def scatter_to_numpy(self, scatter: NDArray[np.float64]) -> NDArray[np.float64]:
        upper = np.triu(scatter)
        return np.ascontiguousarray(upper + np.triu(scatter, 1).T)


class TorchBackend:
    """PyTorch float64 on ``device`` (CUDA when present and no device is given, else CPU).

    Data stay numpy on the host; each operation moves the row blocks it needs to the device
    (on the CPU ``torch.from_numpy`` shares the memory, nothing is copied). torch has no public
    ``syrk``: the Gram matrix is a full ``AᵀA`` product (twice numpy's syrk flops on a CPU; on a
    GPU the product is cheap anyway).
    """

    name = "torch"

    def __init__(self, device: str | None = None) -> None:
        try:
            import torch
        except ImportError:
            raise ValueError(
                "backend='torch' needs PyTorch, which is not installed; install it (pip install torch) "
                "or use backend='numpy'"
            ) from None
        self._torch = torch
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        resolved = torch.device(device)
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but no CUDA device is available; use device='cpu'")
        self._device = resolved
        self.device = str(resolved)

    # -- transfers ------------------------------------------------------------------------------
    def _t(self, array: NDArray[Any]) -> Any:
        tensor = self._torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
        return tensor.to(self._device, non_blocking=False)

    @staticmethod
    def _np(tensor: Any) -> NDArray[np.float64]:
        return np.array(tensor.detach().cpu().numpy(), dtype=np.float64, copy=True)

    def _blocks(self, n: int, block_size: int) -> Iterator[slice]:
        # On the CPU one call over all rows is fastest (shared memory); on a GPU, blocks bound the transfer.
        step = n if self._device.type == "cpu" else max(1, block_size)
        for start in range(0, n, step):
            yield slice(start, min(start + step, n))

    # -- operations ------------------------------------------------------------------------------
    def centered_gram(
        self, features: NDArray[np.float64], mean: NDArray[np.float64], block_size: int
    ) -> NDArray[np.float64]:
        n, d = features.shape
        mean_t = self._t(mean)
        gram = self._torch.zeros((d, d), dtype=self._torch.float64, device=self._device)
        for start in range(0, n, block_size):
            block = self._t(features[start : min(start + block_size, n)]) - mean_t
            gram.addmm_(block.T, block)
        return self._np(0.5 * (gram + gram.T))

    def kernel(self, features: NDArray[np.float64]) -> NDArray[np.float64]:
        f = self._t(features)
        k = f @ f.T
        return self._np(0.5 * (k + k.T))

    def eigh(self, matrix: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        values, vectors = self._torch.linalg.eigh(self._t(matrix))
        return self._np(values), self._np(vectors)

    def dot(self, features: NDArray[np.float64], matrix: NDArray[np.float64]) -> NDArray[np.float64]:
        m = self._t(matrix)
        out = np.empty((features.shape[0],) + matrix.shape[1:])
        for rows in self._blocks(features.shape[0], 8192):
            out[rows] = self._np(self._t(features[rows]) @ m)
        return out

    def centered_dot(
        self, features: NDArray[np.float64], mean: NDArray[np.float64], matrix: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        return self.dot(features, matrix) - mean @ matrix

    def solve_spd(self, matrix: NDArray[np.float64], rhs: NDArray[np.float64]) -> NDArray[np.float64]:
        torch = self._torch
        a, b = self._t(matrix), self._t(rhs)
        factor, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0:
            return self._np(torch.cholesky_solve(b, factor))
        values, vectors = torch.linalg.eigh(a)  # not numerically PD: V diag(1/w) Vᵀ, as the numpy backend
        return self._np(vectors @ ((vectors.T @ b) / values[:, None]))

    def logdet_spd(self, matrix: NDArray[np.float64]) -> float:
        torch = self._torch
        a = self._t(matrix)
        factor, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0:
            return float(2.0 * torch.log(torch.diagonal(factor)).sum())
        sign, value = torch.linalg.slogdet(a)
        return float(value) if float(sign) > 0 else float("-inf")

    def small_gram(self, block: NDArray[np.float64]) -> NDArray[np.float64]:
        b = self._t(block)
        return self._np(b @ b.T if block.shape[0] < block.shape[1] else b.T @ b)

    def weighted_class_scatter(
        self,
        features: NDArray[np.float64],
        mean: NDArray[np.float64],
        labels: NDArray[np.intp],
        offsets: NDArray[np.float64],
        weights: NDArray[np.float64],
        block_size: int,
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        torch = self._torch
        n, d = features.shape
        mean_t, offsets_t = self._t(mean), self._t(offsets)
        second_moment = torch.zeros((d, d), dtype=torch.float64, device=self._device)
        sums = torch.zeros_like(offsets_t)
        for start in range(0, n, block_size):
            rows = slice(start, min(start + block_size, n))
            y = torch.from_numpy(np.ascontiguousarray(labels[rows], dtype=np.int64)).to(self._device)
            block = (self._t(features[rows]) - mean_t - offsets_t[y]) * self._t(weights[rows])[:, None]
            second_moment.addmm_(block.T, block)
            sums.index_add_(0, y, block)
        return self._np(second_moment), self._np(sums)

    # -- streaming accumulators: full matrices on the device ------------------------------------------
    def new_scatter(self, dim: int) -> Any:
        return self._torch.zeros((dim, dim), dtype=self._torch.float64, device=self._device)

    def syrk_update(self, scatter: Any, block: NDArray[np.float64]) -> Any:
        b = self._t(block)
        return scatter.addmm_(b.T, b)

    def rank1_update(self, scatter: Any, vector: NDArray[np.float64], alpha: float) -> Any:
        v = self._t(vector)
        return scatter.addr_(v, v, alpha=alpha)

    def symv(self, scatter: Any, vector: NDArray[np.float64]) -> NDArray[np.float64]:
        return self._np(scatter @ self._t(vector))

    def add_scatter(self, scatter: Any, matrix: NDArray[np.float64]) -> Any:
        return scatter.add_(self._t(matrix))

    def scatter_to_numpy(self, scatter: Any) -> NDArray[np.float64]:
        return self._np(0.5 * (scatter + scatter.T))


_NUMPY = NumpyBackend()


def get_backend(backend: str | Backend | None = None, device: str | None = None) -> Backend:
    """A backend by name (``"numpy"`` or ``"torch"``); None: the one set by :func:`use_backend`."""
    if backend is None:
        backend, default_device = _DEFAULT.get()
        device = default_device if device is None else device
    if not isinstance(backend, str):
        return backend
    if backend == "numpy":
        if device not in (None, "cpu"):
            raise ValueError(f"the numpy backend runs on the CPU only; got device={device!r} (use backend='torch')")
        return _NUMPY
    if backend == "torch":
        return TorchBackend(device)
    raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")


@contextmanager
def use_backend(backend: str, device: str | None = None) -> Iterator[None]:
    """Make ``backend`` (on ``device``) the default of every ``Statistics`` built inside the block.

    >>> import numpy as np
    >>> from estimators import Statistics
    >>> with use_backend("numpy"):
    ...     Statistics(np.eye(4), [0, 0, 1, 1]).backend.name
    'numpy'
    """
    get_backend(backend, device)  # fail here, not at the first Statistics, on a bad name or device
    token = _DEFAULT.set((backend, device))
    try:
        yield
    finally:
        _DEFAULT.reset(token)
