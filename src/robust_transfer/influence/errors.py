"""The influence package's exceptions, in one leaf module every other module may import.

(:mod:`.forms` and :mod:`.solvers` both raise :func:`factor_failed`; keeping it here breaks
what was an import circle between them.)
"""

from __future__ import annotations

from robust_transfer.errors import RobustTransferError


class SingularHessianError(RobustTransferError, ValueError):
    """The Hessian is singular and no damping was given."""


class InfluenceMemoryError(RobustTransferError, MemoryError):
    """The chosen solver would need more memory than is available."""


class ConvergenceError(RobustTransferError):
    """Conjugate gradients or mixed-precision refinement did not reach the tolerance."""


def factor_failed(damping: float, how: str) -> SingularHessianError:
    """The error for a factorisation of ``H + damping I`` (or of a Woodbury matrix) that failed."""
    return SingularHessianError(
        f"the last-layer Hessian plus damping {damping:g} is numerically singular ({how}: "
        f"saturated probabilities or nearly collinear features); pass a larger damping "
        f"(e.g. --damping 1e-3) or use solver 'pinv'")
