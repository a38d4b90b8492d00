"""Names the engine accepts, without importing torch (parsers and specs list them).

:mod:`.attacks` and :mod:`.training` re-export these; the CLI's ``--help`` and the study
store read them from here so that they answer without importing torch.
"""

NORMS = ("l2", "linf")  # threat models of the attacks
SCHEDULES = ("step", "cosine", "constant")  # learning-rate schedules of the training loop
