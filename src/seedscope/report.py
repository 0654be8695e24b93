"""The rendered compendium: reports/index.html gathers headline numbers, key figures and
links to every rendered notebook, with the provenance of each figure and number."""

from __future__ import annotations

import html
import shutil
from pathlib import Path
from typing import Any

from seedscope.io import atomic_path, read_json
from seedscope.metrics import format_value
from seedscope.paths import figures_dir, metrics_dir, reports_dir
from seedscope.pipeline import STAGES

ANALYSES = {
    "train": "Mini-suite training",
    "token_losses": "Per-token log-probs (the central table)",
    "loss_correlation": "1 · Seed-pair agreement, token by token",
    "convergence": "2 · Mid-training gaps: closed by the end?",
    "loss_pca": "3 · Principal components of per-token loss",
    "behaviours": "4 · Behaviours over runs and checkpoints",
    "trajectories": "5 · Per-token loss trajectories: smooth or S-shaped?",
    "induction": "6 · The induction-head phase change",
}

CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
h1{margin-bottom:.2em} .sub{color:#555;margin-top:0}
table{border-collapse:collapse;width:100%;margin:1em 0} td,th{border-bottom:1px solid #ddd;
padding:.35em .5em;text-align:left;vertical-align:top} th{background:#f5f5f5}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:1em}
.card{border:1px solid #ddd;border-radius:6px;padding:.8em} .card img{width:100%}
.prov{font-size:.85em;color:#555} code{background:#f3f3f3;padding:0 .2em}
.num{font-variant-numeric:tabular-nums;white-space:nowrap}
"""


def collect(metrics: Path | None = None, figures: Path | None = None) -> dict[str, Any]:
    """Metrics and figure indexes of every analysis stage that has produced them."""
    metrics = metrics or metrics_dir()
    figures = figures or figures_dir()
    out: dict[str, Any] = {}
    for stage in ANALYSES:
        entry: dict[str, Any] = {}
        if (metrics / "details" / f"{stage}.json").exists():
            entry["metrics"] = read_json(metrics / "details" / f"{stage}.json")
        if (figures / stage / "index.json").exists():
            entry["figures"] = read_json(figures / stage / "index.json")
        if entry:
            out[stage] = entry
    return out


def build_report(
    manifest: dict[str, Any],
    title: str,
    provenance: dict[str, Any],
    out_dir: Path | None = None,
) -> Path:
    """Write reports/index.html and its assets; return the page's path."""
    out_dir = out_dir or reports_dir()
    assets = out_dir / "assets"
    if assets.exists():
        shutil.rmtree(assets)
    assets.mkdir(parents=True)
    data = collect()
    esc = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<p class='sub'>How much do training runs that differ only in their random seed "
        "differ — token by token, behaviour by behaviour, and in when their circuits form?</p>",
        f"<p>Suite <b>{esc(manifest['suite'])}</b>: {esc(manifest['description'])}. Runs: "
        + ", ".join(
            f"{esc(r['name'])} (seed {r['seed']}, {esc(r['size'])})" for r in manifest["runs"]
        )
        + f". Mid step {manifest['mid_step']}, final step {manifest['final_step']}.</p>",
        f"<p class='prov'>params hash <code>{esc(str(manifest.get('params_hash')))}</code> · "
        f"git commit <code>{esc(str(provenance.get('git_commit')))}</code></p>",
        "<h2>Headline numbers</h2><table><tr><th>analysis</th><th>quantity</th>"
        "<th>value [95% CI]</th></tr>",
    ]
    for stage, entry in data.items():
        for key, number in entry.get("metrics", {}).get("headline", {}).items():
            parts.append(
                f"<tr><td>{esc(ANALYSES[stage])}</td><td>{esc(number['label'])}</td>"
                f"<td class='num' data-metric='{esc(stage)}.{esc(key)}'>"
                f"{esc(format_value(number))}</td></tr>"
            )
    parts.append("</table><h2>Analyses</h2><div class='cards'>")
    repro_rows = []
    for stage, entry in data.items():
        nb = STAGES[stage].notebook
        figs = entry.get("figures", {})
        key_fig = next((f for f in figs.values() if f.get("key")), None)
        parts.append(f"<div class='card'><h3>{esc(ANALYSES[stage])}</h3>")
        if key_fig:
            thumb = assets / f"{stage}-{key_fig['file']}"
            shutil.copyfile(figures_dir() / stage / key_fig["file"], thumb)
            parts.append(
                f"<a href='notebooks/{nb}.html'><img src='assets/{thumb.name}' "
                f"alt='{esc(key_fig['title'])}'></a><p>{esc(key_fig['title'])}</p>"
            )
        prov = entry.get("metrics", {}).get("provenance", {})
        parts.append(
            f"<p><a href='notebooks/{nb}.html'>rendered notebook</a> · "
            f"<a href='notebooks/{nb}.ipynb'>executed .ipynb</a></p>"
            f"<p class='prov'>runs: {esc(', '.join(prov.get('runs', [])))}<br>"
            f"steps: {esc(', '.join(map(str, prov.get('steps', []))))}<br>"
            f"params hash {esc(str(prov.get('params_hash')))} · "
            f"commit {esc(str(prov.get('git_commit')))}</p></div>"
        )
        for name, fig in figs.items():
            repro_rows.append(
                f"<tr><td>{esc(fig['title'])}</td><td><code>figures/{stage}/{esc(fig['file'])}"
                f"</code></td><td><code>{esc(fig['notebook'])}</code></td><td><code>"
                f"{esc(fig['function'])}</code></td><td><code>dvc repro {stage}</code></td></tr>"
            )
            del name
    parts.append(
        "</div><h2>Reproduce this figure</h2><table><tr><th>figure</th><th>file</th>"
        "<th>notebook</th><th>function</th><th>command</th></tr>"
    )
    parts.extend(repro_rows)
    parts.append(
        "</table><p class='prov'>Every figure and number is produced by the stage "
        "named beside it; <code>dvc repro</code> rebuilds them all.</p></body></html>"
    )
    page = out_dir / "index.html"
    with atomic_path(page) as tmp:
        tmp.write_text("\n".join(parts))
    return page
