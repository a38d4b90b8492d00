"""The report's sections, in order: each module turns the analysis into its part of the
:class:`~robust_transfer.analysis.document.Document` (tables, paragraphs, figures with
their captions).

A section is a module with ``build(result, draw) -> list[Section]`` (empty when it has
nothing to say; ``draw`` says whether to draw its figures); a new section is one module
plus its entry in :data:`SECTIONS`.
"""

from __future__ import annotations

from robust_transfer.analysis.document import Document
from robust_transfer.analysis.result import AnalysisResult
from robust_transfer.analysis.sections import (
    accuracy,
    blocks,
    differences,
    efficiency,
    explanations,
    figures,
    headlines,
    method,
    overview,
    robustness,
    tuning,
    verdict,
)

SECTIONS = (verdict, headlines, overview, figures, explanations, robustness, tuning, accuracy,
            differences, blocks, efficiency, method)


def build_document(result: AnalysisResult, title: str, draw: bool = True) -> Document:
    """The report of ``result``: every section of :data:`SECTIONS`, in order."""
    return Document(title, tuple(part for section in SECTIONS
                                 for part in section.build(result, draw)))
