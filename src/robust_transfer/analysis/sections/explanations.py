"""Why: influence (class match of the most helpful training images) and saliency."""

from __future__ import annotations

from functools import partial

from robust_transfer.analysis.document import Bullets, Figure, Section
from robust_transfer.analysis.explain import class_match_figure, paired_sentence, saliency_figure
from robust_transfer.analysis.result import AnalysisResult
from robust_transfer.analysis.sections.common import base_name, names

HEADING = "Why: influence and saliency"


def build(result: AnalysisResult, draw: bool) -> list[Section]:
    """The paired class-match test, the outputs shown, and their figures."""
    lines = why_lines(result)
    if not lines:
        return []
    figures = _figures(result) if draw else []
    return [Section(HEADING, (Bullets(tuple(lines)), *figures))]


def why_lines(result: AnalysisResult) -> list[str]:
    """The section's sentences: the paired test, then the folders shown."""
    exp = result.explanations
    if exp is None:
        return []
    lines = []
    if exp.influence and len(exp.paired):
        lines += paired_sentence(exp.paired, names(result), result.options.percent)
    elif exp.influence:
        lines.append(f"No influence output holds a {base_name(result)} model to pair with, "
                     "so no class-match difference is tested.")
    lines += [f"Influence output: {f.path}" for f in exp.influence]
    lines += [f"Saliency output: {f.path}" for f in exp.saliency]
    return lines


def _figures(result: AnalysisResult) -> list[Figure]:
    """Class-match curves, saliency maps, then the influence outputs' top-k grids (Fig. 5)."""
    exp = result.explanations
    if exp is None:
        return []
    shown, order = names(result), list(result.sources["source"])
    figures = []
    if exp.influence:
        figures.append(Figure(
            "why_class_match", "Why: share of test images whose k-th most influential "
            "training image has the test image's class (left), and each source minus "
            f"{shown.get(exp.baseline_model or '', exp.baseline_model)} paired over the same "
            "test images (right).", partial(class_match_figure, exp, shown, order)))
    for i, folder in enumerate(exp.saliency):
        figures.append(Figure(
            f"why_saliency_{i}", f"Why: input-gradient magnitude of each source's fine-tuned "
            f"model ({folder.path.name}), greyscale, at the model input's own size.",
            partial(saliency_figure, folder, shown, order, exp.baseline_model)))
    for i, influence in enumerate(exp.influence):
        grid = influence.path / "influence_grid.png"
        if grid.is_file():
            figures.append(Figure(f"why_topk_{i}", f"Why: most helpful training images of each "
                                  f"test image ({influence.path.name}); green captions share "
                                  "the test image's class, red do not.", png=grid))
    return figures
