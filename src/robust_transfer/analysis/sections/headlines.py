"""Headline findings, most important first (:func:`~robust_transfer.analysis.findings.headlines`)."""

from __future__ import annotations

from robust_transfer.analysis.document import Bullets, Section
from robust_transfer.analysis.result import AnalysisResult


def build(result: AnalysisResult, draw: bool) -> list[Section]:
    """The findings as a list."""
    return [Section("Headline findings", (Bullets(tuple(result.headlines), headlines=True),))]
