"""robust-transfer: adversarially trained source models and how well they transfer.

Implements the system of "Adversarially-Trained Deep Nets Transfer Better"
(Utrera et al., arXiv 2007.05869): PGD source training, fine-tuning with the last k
blocks unfrozen, study grids, analysis with confidence intervals, influence functions
and saliency maps.
"""

from robust_transfer.errors import RobustTransferError

__version__ = "0.1.0"
__all__ = ["RobustTransferError", "__version__"]
