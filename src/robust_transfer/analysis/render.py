"""The report as one self-contained HTML file and as Markdown.

The HTML embeds its figures as base64 PNG data URIs and its style inline, so it opens
anywhere with no other file; the Markdown links the PNGs in ``figures/``. Both put the
headline findings first, then coverage, figures, tables, the study spec, the method and
the environment.
"""

from __future__ import annotations

import base64
import html
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import TYPE_CHECKING

from robust_transfer.analysis.frames import unfrozen_text
from robust_transfer.analysis.stats import BY_BUDGET
from robust_transfer.analysis.tables import to_markdown

if TYPE_CHECKING:
    from robust_transfer.analysis.report import AnalysisResult

PACKAGES = ("robust-transfer", "numpy", "pandas", "scipy", "matplotlib", "torch", "torchvision")
TABLE_KINDS = ("accuracy", "delta", "image_factors", "epoch_factors")
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;
margin:2em auto;padding:0 1em;color:#1d1d1d;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
ul.headlines li{margin:.35em 0}.meta{color:#555}
table{border-collapse:collapse;font-size:.82em;margin:.6em 0 1.4em}
th,td{border:1px solid #d5d5d5;padding:.2em .55em;text-align:right}th{background:#f4f4f4}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#444;font-size:.9em}pre{background:#f7f7f7;padding:.8em;overflow-x:auto}
"""


def environment() -> dict[str, str]:
    """Python, platform and package versions (read from metadata; nothing is imported)."""
    env = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = "not installed"
    env["generated"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return env


def overview(result: AnalysisResult) -> list[str]:
    """Sentences on what was analysed: coverage, sources, baseline, seeds, intervals."""
    seeds = result.summary["n_seeds"]
    lines = [
        f"Coverage: {result.coverage.sentence()}.",
        f"Baseline: {_base_name(result)} (label '{result.baseline}'); sources: "
        + ", ".join(f"{n} ('{s}')" for s, n in zip(result.sources["source"],
                                                  result.sources["name"], strict=True)) + ".",
        f"Targets: {', '.join(sorted(result.runs['target'].unique()))}; seeds per cell: "
        f"{int(seeds.min())}-{int(seeds.max())}.",
        f"Intervals: {result.options.percent} {_method_name(result)} over seeds.",
        f"Accuracy against epochs: {_curve_kind(result)}.",
    ]
    for col, values in result.recipe.items():
        lines.append(f"Runs differ in {col}: {', '.join(values)}.")
    return lines


def method_notes(result: AnalysisResult) -> list[str]:
    """How the numbers were computed, in a few sentences."""
    base = _base_name(result)
    return [
        f"Each cell's interval is a {_method_name(result)} over its seeds; cells with one "
        "seed have none.",
        f"Differences are paired: a source's run and the {base} run with the same target, "
        "n, unfrozen blocks, epoch budget and seed (the same training images) give one "
        "difference, and the interval is over those differences.",
        f"Image factors: for each seed, the {base} accuracy at n is the goal; the other "
        "source's accuracy curve, linear in log n between measured points, first reaches it "
        "at n'; the factor is n / n'. The point estimate is the geometric mean over seeds and "
        "the interval is taken over the seeds' log factors. Nothing is extrapolated: "
        "'≥' marks a source already above the goal at its smallest n (a lower bound), "
        "'not reached' one that never reaches it.",
        "Epoch factors do the same along each run's per-epoch test accuracy, on log epochs; "
        "a setting's factor is the geometric mean over the epochs where every seed reached "
        "the goal.",
    ]


def _curve_kind(result: AnalysisResult) -> str:
    budgets = set(result.curves["budget"])
    if not budgets:
        return ("none (no per-epoch rows and a single epoch budget), so no epoch figures or "
                "epoch factors")
    if budgets == {BY_BUDGET}:
        return "final accuracy of each epoch budget (no per-epoch rows were given)"
    return "each run's per-epoch test accuracy"


def _method_name(result: AnalysisResult) -> str:
    if result.options.method == "t":
        return "Student t-interval"
    return f"{result.options.method} interval ({result.options.n_boot} resamples)"


def _base_name(result: AnalysisResult) -> str:
    return str(result.sources.loc[result.sources["is_baseline"], "name"].iloc[0])


def table_title(result: AnalysisResult, kind: str, key: tuple[str, str]) -> str:
    """Heading of one table, naming what the cells are and the setting."""
    unfrozen, second = key
    if second == BY_BUDGET:
        setting = f"{unfrozen_text(unfrozen)}, final accuracy per epoch budget"
    elif kind == "epoch_factors":
        setting = f"{unfrozen_text(unfrozen)}, {second}-epoch runs"
    else:
        setting = f"{unfrozen_text(unfrozen)}, {second} epochs"
    pct, base = result.options.percent, _base_name(result)
    what = {
        "accuracy": f"Test accuracy (%), mean ± half the {pct} interval",
        "delta": f"Accuracy minus {base} (points), paired by seed, [{pct} interval]",
        "image_factors": f"Times fewer training images than {base} at each n [{pct} interval]",
        "epoch_factors": f"Times fewer epochs than {base}, geometric mean over epochs "
                         f"[{pct} interval]",
    }[kind]
    return f"{what} — {setting}"


KIND_HEADINGS = {"accuracy": "Accuracy", "delta": "Differences from the baseline",
                 "image_factors": "Data efficiency: images",
                 "epoch_factors": "Data efficiency: epochs"}


def html_report(result: AnalysisResult, title: str) -> str:
    """The whole report as one HTML document (figures embedded)."""
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}"
             f"</title><style>{CSS}</style></head><body><h1>{esc(title)}</h1>",
             "<h2>Headline findings</h2><ul class='headlines'>",
             *(f"<li>{esc(line)}</li>" for line in result.headlines), "</ul>",
             "<h2>What was analysed</h2>", *(f"<p>{esc(s)}</p>" for s in overview(result)),
             "<h2>Figures</h2>", *_html_figures(result)]
    for kind in TABLE_KINDS:
        parts += _html_tables(result, kind)
    if result.spec_text:
        parts.append(f"<h2>Study specification</h2><pre>{esc(result.spec_text)}</pre>")
    parts += ["<h2>Method</h2>", *(f"<p>{esc(s)}</p>" for s in method_notes(result))]
    parts += ["<h2>Environment</h2><table>",
              *(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in environment().items()),
              "</table></body></html>"]
    return "\n".join(parts)


def _html_figures(result: AnalysisResult) -> list[str]:
    parts = []
    for key, caption in result.captions.items():
        paths = result.figures.get(key)
        if paths is None:
            parts.append(f"<p class='meta'>{html.escape(caption)} (no data to plot)</p>")
            continue
        data = base64.b64encode(paths["png"].read_bytes()).decode("ascii")
        parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(key)}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if not result.captions:
        parts.append("<p class='meta'>Figures were not drawn.</p>")
    return parts


def _html_tables(result: AnalysisResult, kind: str) -> list[str]:
    tables = result.tables.get(kind, {})
    parts = [f"<h2>{KIND_HEADINGS[kind]}</h2>"]
    if not tables:
        parts.append("<p class='meta'>Nothing to show (no paired data).</p>")
    for key, table in tables.items():
        parts.append(f"<h3>{html.escape(table_title(result, kind, key))}</h3>")
        parts.append(table.to_html(escape=True, border=0))
    return parts


def markdown_report(result: AnalysisResult, title: str, figure_dir: str) -> str:
    """The report as Markdown; figures are linked from ``figure_dir``."""
    parts = [f"# {title}", "", "## Headline findings", "",
             *(f"- {line}" for line in result.headlines), "", "## What was analysed", "",
             *(f"- {s}" for s in overview(result)), "", "## Figures", ""]
    for key, caption in result.captions.items():
        if key in result.figures:
            parts += [f"![{key}]({figure_dir}/{key}.png)", "", f"*{caption}*", ""]
        else:
            parts += [f"*{caption} (no data to plot)*", ""]
    for kind in TABLE_KINDS:
        parts += [f"## {KIND_HEADINGS[kind]}", ""]
        for key, table in result.tables.get(kind, {}).items():
            parts += [f"### {table_title(result, kind, key)}", "", to_markdown(table), ""]
    if result.spec_text:
        parts += ["## Study specification", "", "```yaml", result.spec_text.rstrip(), "```", ""]
    parts += ["## Method", "", *(f"- {s}" for s in method_notes(result)), "",
              "## Environment", "", *(f"- {k}: {v}" for k, v in environment().items()), ""]
    return "\n".join(parts)
