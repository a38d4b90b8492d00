"""The report as one self-contained HTML file and as Markdown.

The HTML embeds its figures as base64 PNG data URIs and its style inline, so it opens
anywhere with no other file; the Markdown links the PNGs in ``figures/``. Both open with
the verdict (two sentences and a heatmap per target), then the details: what was
analysed, the sources, figures, the "why" (influence, saliency), robustness after
transfer and learning rates tuned on validation (each only when the runs measured it),
tables, the study spec, the method and the environment.
"""

from __future__ import annotations

import base64
import html
import math
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata

import pandas as pd

from robust_transfer.analysis.budgets import epochs_text
from robust_transfer.analysis.explain import paired_sentence
from robust_transfer.analysis.frames import display_name, unfrozen_key, unfrozen_text
from robust_transfer.analysis.result import AnalysisResult
from robust_transfer.analysis.stats import BY_BUDGET
from robust_transfer.analysis.tables import to_markdown

PACKAGES = ("robust-transfer", "numpy", "pandas", "scipy", "matplotlib", "torch", "torchvision")
TABLE_KINDS = ("accuracy", "delta", "blocks", "image_factors", "epoch_factors")
VERDICT, FIGURES, WHY, ROBUST = "verdict_", ("fig1", "fig2", "fig3"), "why_", "robust_"
ROBUST_HEADING, TUNING_HEADING = "Robustness after transfer", "Tuned on validation"
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;
margin:1.2em auto;padding:0 1em;color:#1d1d1d;line-height:1.45}
h1{font-size:1.45em;margin:.2em 0 .4em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}p.verdict{font-size:1.02em;margin:.35em 0}ul.headlines li{margin:.35em 0}
.meta{color:#555}table{border-collapse:collapse;font-size:.82em;margin:.6em 0 1.4em}
th,td{border:1px solid #d5d5d5;padding:.2em .55em;text-align:right}th{background:#f4f4f4}
figure{margin:.6em 0}figure img{width:100%;border:1px solid #eee}
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


def base_name(result: AnalysisResult) -> str:
    """Display name of the baseline source."""
    return str(result.sources.loc[result.sources["is_baseline"], "name"].iloc[0])


def overview(result: AnalysisResult) -> list[str]:
    """Sentences on what was analysed: coverage, sources, baseline, seeds, intervals, policy."""
    seeds = result.summary["n_seeds"]
    lines = [
        f"Coverage: {result.coverage.sentence()}.",
        f"Baseline: {base_name(result)} (label '{result.baseline}'); sources: "
        + ", ".join(f"{n} ('{s}')" for s, n in zip(result.sources["source"],
                                                  result.sources["name"], strict=True)) + ".",
        f"Targets: {', '.join(sorted(result.runs['target'].unique()))}; seeds per cell: "
        + (f"{int(seeds.min())}." if seeds.min() == seeds.max() else
           f"{int(seeds.min())}-{int(seeds.max())}."),
        f"Intervals: {result.options.percent} {_method_name(result)} over seeds.",
        f"Accuracy against epochs: {_curve_kind(result)}.",
        *result.notes,
    ]
    for col, values in result.recipe.items():
        lines.append(f"Runs differ in {col}: {', '.join(values)}.")
    return lines


def method_notes(result: AnalysisResult) -> list[str]:
    """How the numbers were computed, in a few sentences."""
    base = base_name(result)
    notes = [
        f"Each cell's interval is a {_method_name(result)} over its seeds; cells with one "
        "seed have none. Table cells give the number of seeds in brackets.",
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
        "The verdict's 'few epochs' point is the evaluated epoch nearest a fifth of the "
        "budget.",
    ]
    if result.block_baseline is not None:
        notes.append(f"Unfrozen blocks compared: accuracy with {unfrozen_text(result.block_baseline)}"
                     " minus each other setting, paired by source, target, n, epochs and seed.")
    notes.append("Every table is also written in long form (numbers, not text) as CSV, and as "
                 "Parquet when pyarrow is installed, in tables/ beside this report.")
    return notes


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


def table_title(result: AnalysisResult, kind: str, key: tuple[str, str]) -> str:
    """Heading of one table, naming what the cells are and the setting."""
    unfrozen, second = key
    if second == BY_BUDGET:
        setting = f"{unfrozen_text(unfrozen)}, final accuracy per epoch budget"
    elif kind == "epoch_factors":
        setting = f"{unfrozen_text(unfrozen)}, {second}-epoch runs"
    else:
        setting = f"{unfrozen_text(unfrozen)}, {epochs_text(second)}"
    pct, base = result.options.percent, base_name(result)
    if kind == "blocks":
        ref = unfrozen_text(result.block_baseline or "")
        return (f"Accuracy with {ref} minus with {unfrozen_text(unfrozen)} (points), paired by "
                f"seed, [{pct} interval] (seeds) — {epochs_text(second)}")
    what = {
        "accuracy": f"Test accuracy (%), mean ± half the {pct} interval (seeds)",
        "delta": f"Accuracy minus {base} (points), paired by seed, [{pct} interval] (seeds)",
        "image_factors": f"Times fewer training images than {base} at each n [{pct} interval]",
        "epoch_factors": f"Times fewer epochs than {base}, geometric mean over epochs "
                         f"[{pct} interval]",
    }[kind]
    return f"{what} — {setting}"


KIND_HEADINGS = {"accuracy": "Accuracy", "delta": "Differences from the baseline",
                 "blocks": "Unfrozen blocks compared",
                 "image_factors": "Data efficiency: images",
                 "epoch_factors": "Data efficiency: epochs"}


def sources_frame(result: AnalysisResult) -> pd.DataFrame:
    """The sources table: name, architecture, norm, eps, clean and robust accuracy."""
    table = result.sources[["source", "name", "norm", "eps"]].copy()
    if result.source_info is not None and len(result.source_info):
        info = result.source_info.drop(columns=["norm", "eps"]).set_index("source")
        table = table.join(info, on="source")
    table["eps"] = [display_name("x", e, n).replace("L2 eps ", "").replace("Linf eps ", "")
                    if isinstance(e, float) and not math.isnan(e) and e > 0 else
                    ("0" if e == 0 else "?") for e, n in zip(table["eps"], table["norm"],
                                                             strict=True)]
    for col in ("clean_acc", "robust_acc"):
        if col in table:
            table[col] = [f"{100 * v:.1f}%" if v == v else "" for v in table[col]]
    return table.rename(columns={"clean_acc": "clean acc", "robust_acc": "robust acc",
                                 "robust_eval": "robust acc under"}).fillna("")


def _why_lines(result: AnalysisResult) -> list[str]:
    exp = result.explanations
    if exp is None:
        return []
    names = dict(zip(result.sources["source"], result.sources["name"], strict=True))
    lines = []
    if exp.influence and len(exp.paired):
        lines += paired_sentence(exp.paired, names)
    elif exp.influence:
        lines.append(f"No influence output holds a {base_name(result)} model to pair with, "
                     "so no class-match difference is tested.")
    lines += [f"Influence output: {f.path}" for f in exp.influence]
    lines += [f"Saliency output: {f.path}" for f in exp.saliency]
    return lines


def _interval_text(mean: float, lo: float, hi: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    if math.isnan(lo) or math.isnan(hi):
        return f"{100 * mean:{sign}.1f}"
    return f"{100 * mean:{sign}.1f} [{100 * lo:{sign}.1f}, {100 * hi:{sign}.1f}]"


def _names(result: AnalysisResult) -> dict[str, str]:
    return dict(zip(result.sources["source"], result.sources["name"], strict=True))


def _setting_columns(frame: pd.DataFrame, several_budgets: bool) -> dict[str, list[str]]:
    cols = {"target": list(frame["target"].astype(str)),
            "n": list(frame["n_label"] if "n_label" in frame else frame["n"].astype(str)),
            "unfrozen": [unfrozen_text(str(u)) for u in frame["unfrozen_blocks"]]}
    if several_budgets:
        cols["epochs"] = list(frame["epochs"].astype(str))
    return cols


def robustness_lines(result: AnalysisResult) -> list[str]:
    """The robustness section's text: what was measured, notes (no gap sentences)."""
    section = result.robustness
    if section is None:
        return []
    rate = result.runs["lr"].dropna().unique() if "lr" in result.runs else []
    rate_text = f", all at lr {float(rate[0]):g}" if len(rate) == 1 else ""
    return [f"Robust accuracy: each fine-tuned model's test accuracy under "
            f"{' / '.join(section.attacks)}, measured once after its final epoch; clean "
            f"accuracy is the same runs' final test accuracy{rate_text}. Tables give the mean "
            f"[{result.options.percent} interval] over seeds in %; the sentences give each "
            f"robust source's robust accuracy minus {base_name(result)}'s, paired by seed, in "
            "points.", *section.notes]


def robustness_frames(result: AnalysisResult) -> list[tuple[str, pd.DataFrame]]:
    """The robustness table as text, one ``(title, frame)`` per attack."""
    section = result.robustness
    if section is None or section.table.empty:
        return []
    table, names = section.table, _names(result)
    order = {s: i for i, s in enumerate(result.sources["source"])}
    several = "epochs" in table and table["epochs"].nunique() > 1
    out = []
    attacks = table["attack"] if "attack" in table else pd.Series("", index=table.index)
    for attack in sorted(attacks.unique()):
        t = table[attacks == attack].copy()
        t["_order"] = [order.get(s, len(order)) for s in t["source"]]
        t["_u"] = [unfrozen_key(str(u)) for u in t["unfrozen_blocks"]]
        t = t.sort_values(["target", "n", "_u", "epochs" if several else "_u", "_order"])
        frame = pd.DataFrame({
            **_setting_columns(t, several),
            "source": [names.get(s, s) for s in t["source"]],
            "clean (%)": [_interval_text(*v) for v in
                          zip(t["clean"], t["clean_lo"], t["clean_hi"], strict=True)],
            "robust (%)": [_interval_text(*v) for v in
                           zip(t["robust"], t["robust_lo"], t["robust_hi"], strict=True)],
            "seeds": list(t["seeds"].astype(int))})
        title = (f"Clean and robust test accuracy (%) after fine-tuning, mean "
                 f"[{result.options.percent} interval] over seeds — robust: "
                 f"{attack or 'attack not recorded'}")
        out.append((title, frame))
    return out


def tuning_lines(result: AnalysisResult) -> list[str]:
    """The tuning section's text: how rates were chosen, then notes (no verdicts)."""
    section = result.tuning
    if section is None:
        return []
    held = (f"{section.val_images} training images held out of every run"
            if section.val_images else "images held out of the training set")
    rates = ", ".join(f"{r:g}" for r in section.rates)
    lines = [f"The learning rate was chosen on validation accuracy, never on test accuracy: "
             f"for each source, target, n and unfrozen setting, the rate (of {rates or 'none'})"
             f" with the highest mean validation accuracy over seeds on {held}; ties go to the "
             "smaller rate."]
    if len(section.deltas):
        lines.append(f"Deltas: {base_name(result)} subtracted, test accuracy in points, paired "
                     "by seed, 95% t-interval over seeds, final epoch; 'shared' is every source "
                     f"at lr {section.shared_lr:g} (the rate every other section uses), 'tuned' "
                     f"each source and {base_name(result)} at its own chosen rate.")
    return [*lines, *section.notes]


def tuning_frames(result: AnalysisResult) -> list[tuple[str, pd.DataFrame]]:
    """The chosen rates (one column per source) and the deltas, as text tables."""
    section = result.tuning
    if section is None or section.chosen.empty:
        return []
    names, several = _names(result), section.chosen["epochs"].nunique() > 1
    chosen = section.chosen.assign(_u=[unfrozen_key(str(u)) for u in
                                       section.chosen["unfrozen_blocks"]])
    chosen["cell"] = [f"{lr:g} ({100 * v:.1f}%)" for lr, v in
                      zip(chosen["lr"], chosen["val_acc"], strict=True)]
    keys = ["target", "n", "_u", "unfrozen_blocks", "epochs"]
    wide = chosen.pivot_table(index=keys, columns="source", values="cell", aggfunc="first")
    wide = wide.reset_index().sort_values(keys)
    sources = [s for s in result.sources["source"] if s in wide.columns]
    pick = pd.DataFrame({**_setting_columns(wide.assign(n_label=wide["n"].astype(str)), several),
                         **{names.get(s, s): list(wide[s].fillna("")) for s in sources}})
    out = [(f"Learning rate each source chose (its mean validation accuracy), of "
            f"{', '.join(f'{r:g}' for r in section.rates)}", pick)]
    d = section.deltas
    if len(d):
        d = d.assign(_u=[unfrozen_key(str(u)) for u in d["unfrozen_blocks"]],
                     _order=[list(result.sources["source"]).index(s)
                             if s in set(result.sources["source"]) else 99 for s in d["source"]])
        d = d.sort_values(["target", "n", "_u", "epochs", "_order"])
        deltas = pd.DataFrame({
            **_setting_columns(d.assign(n_label=d["n"].astype(str)), several),
            "source": [names.get(s, s) for s in d["source"]],
            f"shared lr {section.shared_lr:g}": [_interval_text(*v, signed=True) for v in zip(
                d["shared_delta"], d["shared_lo"], d["shared_hi"], strict=True)],
            "tuned": [_interval_text(*v, signed=True) for v in zip(
                d["tuned_delta"], d["tuned_lo"], d["tuned_hi"], strict=True)],
            "tuned lr (source vs base)": [f"{a:g} vs {b:g}" for a, b in
                                          zip(d["lr"], d["baseline_lr"], strict=True)],
            "seeds": list(d["seeds"].astype(int))})
        out.append((f"Accuracy minus {base_name(result)} (points) at the shared rate and at "
                    "each source's own rate chosen on validation [95% t-interval]", deltas))
    return out


# --- HTML --------------------------------------------------------------------------------
def html_report(result: AnalysisResult, title: str) -> str:
    """The whole report as one HTML document (figures embedded)."""
    esc = html.escape
    few_images, few_epochs = result.sentences
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}"
             f"</title><style>{CSS}</style></head><body><h1>{esc(title)}</h1>",
             *(f"<p class='verdict'><b>{esc(s.split(':', 1)[0])}:</b>{esc(s.split(':', 1)[1])}"
               "</p>" for s in (few_images, few_epochs)),
             *_html_figures(result, lambda k: k.startswith(VERDICT)),
             "<h2>Headline findings</h2><ul class='headlines'>",
             *(f"<li>{esc(line)}</li>" for line in result.headlines), "</ul>",
             "<h2>What was analysed</h2>", *(f"<p>{esc(s)}</p>" for s in overview(result)),
             "<h2>Sources</h2>", sources_frame(result).to_html(index=False, border=0),
             "<h2>Figures</h2>", *_html_figures(result, lambda k: k.startswith(FIGURES))]
    why = _why_lines(result)
    if why:
        parts += ["<h2>Why: influence and saliency</h2>", *(f"<p>{esc(s)}</p>" for s in why),
                  *_html_figures(result, lambda k: k.startswith(WHY))]
    if result.robustness is not None:
        parts += [f"<h2>{ROBUST_HEADING}</h2>",
                  *(f"<p>{esc(s)}</p>" for s in robustness_lines(result)),
                  *(f"<p class='verdict'>{esc(s)}</p>" for s in result.robustness.sentences),
                  *_html_titled(robustness_frames(result)),
                  *_html_figures(result, lambda k: k.startswith(ROBUST))]
    if result.tuning is not None:
        parts += [f"<h2>{TUNING_HEADING}</h2>",
                  *(f"<p>{esc(s)}</p>" for s in tuning_lines(result)),
                  *_html_titled(tuning_frames(result))]
        if result.tuning.sentences:
            parts += ["<ul class='headlines'>",
                      *(f"<li>{esc(s)}</li>" for s in result.tuning.sentences), "</ul>"]
    for kind in TABLE_KINDS:
        parts += _html_tables(result, kind)
    if result.spec_text:
        parts.append(f"<h2>Study specification</h2><pre>{esc(result.spec_text)}</pre>")
    parts += ["<h2>Method</h2>", *(f"<p>{esc(s)}</p>" for s in method_notes(result))]
    parts += ["<h2>Environment</h2><table>",
              *(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in environment().items()),
              "</table></body></html>"]
    return "\n".join(parts)


def _html_figures(result: AnalysisResult, wanted) -> list[str]:
    parts = []
    for key, caption in result.captions.items():
        if not wanted(key):
            continue
        paths = result.figures.get(key)
        if paths is None:
            parts.append(f"<p class='meta'>{html.escape(caption)} (no data to plot)</p>")
            continue
        data = base64.b64encode(paths["png"].read_bytes()).decode("ascii")
        parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(key)}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if not result.captions and wanted("fig1"):
        parts.append("<p class='meta'>Figures were not drawn.</p>")
    return parts


def _html_titled(frames: list[tuple[str, pd.DataFrame]]) -> list[str]:
    return [part for title, frame in frames for part in
            (f"<h3>{html.escape(title)}</h3>", frame.to_html(escape=True, border=0, index=False))]


def _html_tables(result: AnalysisResult, kind: str) -> list[str]:
    tables = result.tables.get(kind, {})
    if kind == "blocks" and not tables:
        return []
    parts = [f"<h2>{KIND_HEADINGS[kind]}</h2>"]
    if not tables:
        parts.append("<p class='meta'>Nothing to show (no paired data).</p>")
    for key, table in tables.items():
        parts.append(f"<h3>{html.escape(table_title(result, kind, key))}</h3>")
        parts.append(table.to_html(escape=True, border=0, index=False))
    return parts


# --- Markdown ----------------------------------------------------------------------------
def markdown_report(result: AnalysisResult, title: str, figure_dir: str) -> str:
    """The report as Markdown; figures are linked from ``figure_dir``."""
    few_images, few_epochs = result.sentences
    parts = [f"# {title}", "", f"**{few_images.split(':', 1)[0]}:**{few_images.split(':', 1)[1]}",
             "", f"**{few_epochs.split(':', 1)[0]}:**{few_epochs.split(':', 1)[1]}", ""]
    parts += _md_figures(result, figure_dir, lambda k: k.startswith(VERDICT))
    parts += ["## Headline findings", "", *(f"- {line}" for line in result.headlines), "",
              "## What was analysed", "", *(f"- {s}" for s in overview(result)), "",
              "## Sources", "", to_markdown(sources_frame(result)), "", "## Figures", ""]
    parts += _md_figures(result, figure_dir, lambda k: k.startswith(FIGURES))
    why = _why_lines(result)
    if why:
        parts += ["## Why: influence and saliency", "", *(f"- {s}" for s in why), ""]
        parts += _md_figures(result, figure_dir, lambda k: k.startswith(WHY))
    if result.robustness is not None:
        parts += [f"## {ROBUST_HEADING}", "", *(f"{s}\n" for s in robustness_lines(result)),
                  *(f"**{s}**\n" for s in result.robustness.sentences)]
        parts += _md_titled(robustness_frames(result))
        parts += _md_figures(result, figure_dir, lambda k: k.startswith(ROBUST))
    if result.tuning is not None:
        parts += [f"## {TUNING_HEADING}", "", *(f"{s}\n" for s in tuning_lines(result))]
        parts += _md_titled(tuning_frames(result))
        if result.tuning.sentences:
            parts += [*(f"- {s}" for s in result.tuning.sentences), ""]
    for kind in TABLE_KINDS:
        tables = result.tables.get(kind, {})
        if kind == "blocks" and not tables:
            continue
        parts += [f"## {KIND_HEADINGS[kind]}", ""]
        for key, table in tables.items():
            parts += [f"### {table_title(result, kind, key)}", "", to_markdown(table), ""]
    if result.spec_text:
        parts += ["## Study specification", "", "```yaml", result.spec_text.rstrip(), "```", ""]
    parts += ["## Method", "", *(f"- {s}" for s in method_notes(result)), "",
              "## Environment", "", *(f"- {k}: {v}" for k, v in environment().items()), ""]
    return "\n".join(parts)


def _md_titled(frames: list[tuple[str, pd.DataFrame]]) -> list[str]:
    return [part for title, frame in frames for part in
            (f"### {title}", "", to_markdown(frame), "")]


def _md_figures(result: AnalysisResult, figure_dir: str, wanted) -> list[str]:
    parts = []
    for key, caption in result.captions.items():
        if not wanted(key):
            continue
        if key in result.figures:
            parts += [f"![{key}]({figure_dir}/{result.figures[key]['png'].name})", "",
                      f"*{caption}*", ""]
        else:
            parts += [f"*{caption} (no data to plot)*", ""]
    return parts
