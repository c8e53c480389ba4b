"""The run's report: ``report.json`` (machine-readable), ``report.md`` (for people) and a PNG of the dev metric per stage.

``report.json`` is an interface other tools read: ``task``, ``metric``, ``teacher`` {path, params, dev},
``stages`` [{name, teacher, data, losses, dev, seconds, ...}], ``student`` {path, params, dev} and
``retention`` (student's main dev metric / teacher's, a fraction).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ernie_common.io import write_atomic, write_json_atomic, write_text_atomic

PLOT_FILE = "dev_by_stage.png"


def build_report(task: str, metric: str, teacher: dict[str, Any], stages: list[dict[str, Any]],
                 student: dict[str, Any], pruned: dict[str, Any] | None = None) -> dict[str, Any]:
    """``pruned`` (``student.init: pruned``): the cut's prune.json: kept layers, how they were chosen, and the
    pruned student's dev metrics before any training."""
    t, s = teacher["dev"].get(metric), student["dev"].get(metric)
    retention = s / t if t not in (None, 0) and s is not None else None
    seconds = sum(st.get("seconds", 0.0) for st in stages) + (teacher.get("finetune_seconds") or 0)
    seconds += (pruned or {}).get("seconds", 0.0)
    return {"task": task, "metric": metric, "teacher": teacher, "pruned": pruned, "stages": stages, "student": student,
            "retention": retention, "compression": teacher["params"] / student["params"],
            "total_seconds": round(seconds, 1)}


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


def scores_table(report: dict[str, Any], paths: bool = True) -> list[str]:
    """Teacher and student (with their paths), parameters, the main dev metric and the others (markdown lines)."""
    m = report["metric"]
    rows = ["| model | params | " + m + " | other dev metrics |", "|---|---|---|---|"]
    for who in ("teacher", "student"):
        r = report[who]
        name = f"{who} ({r['path']})" if paths else who
        rows.append(f"| {name} | {r['params']:,} | {_fmt(r['dev'].get(m))} | "
                    + ", ".join(f"{k} {_fmt(v)}" for k, v in r["dev"].items() if k != m) + " |")
    return rows


def stage_table(report: dict[str, Any]) -> list[str]:
    """The pruned start (if any) and each stage: teacher, data, losses, steps, the main dev metric, seconds."""
    m = report["metric"]
    lines = ["| stage | teacher | data | losses (weight) | steps | " + m + " | seconds |",
             "|---|---|---|---|---|---|---|"]
    pruned = report.get("pruned")
    if pruned:
        lines.append(f"| pruned (start) | cut from the {pruned['prune_from']} teacher: layers {pruned['layers']} "
                     f"({pruned['layer_choice']['method']}) | - | - | - | {_fmt(pruned['dev'].get(m))} | "
                     f"{pruned.get('seconds', '-')} |")
    for st in report["stages"]:
        losses = ", ".join(f"{k} {w:g}" for k, w in st["losses"].items() if w)
        lines.append(f"| {st['name']} | {st['teacher']} | {st['data']} | {losses} | {st.get('steps', '-')} | "
                     f"{_fmt(st['dev'].get(m))} | {st.get('seconds', '-')} |")
    return lines


def retention_line(report: dict[str, Any]) -> str:
    m, retention = report["metric"], report["retention"]
    if retention is None:
        return f"Main dev metric: **{m}**."
    return f"Main dev metric: **{m}**. Final student keeps **{retention:.1%}** of the teacher's {m}"


def render_markdown(report: dict[str, Any]) -> str:
    m = report["metric"]
    lines = [f"# Distillation report: {report['task']}", "", retention_line(report), "", *scores_table(report), "",
             f"Compression: {report['compression']:.1f}x fewer parameters.", "", *stage_table(report),
             "", f"Dev {m} after each stage: {PLOT_FILE}. Total wall time: {report['total_seconds']} s.", ""]
    return "\n".join(lines)


def plot_stages(report: dict[str, Any], path: str | Path) -> Path:
    """Line plot of the main dev metric after each stage, with the teacher's as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = report["metric"]
    names = [st["name"] for st in report["stages"]]
    values = [st["dev"].get(m) for st in report["stages"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(names, values, marker="o", label="student")
    if report["teacher"]["dev"].get(m) is not None:
        ax.axhline(report["teacher"]["dev"][m], linestyle="--", color="grey", label="teacher")
    ax.set_xlabel("after stage")
    ax.set_ylabel(f"dev {m}")
    ax.set_title(f"{report['task']}: dev {m} by stage")
    ax.legend()
    fig.tight_layout()
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100))
    finally:
        plt.close(fig)


def write_report(report: dict[str, Any], output_dir: str | Path) -> dict[str, Path]:
    out = Path(output_dir)
    return {"json": write_json_atomic(out / "report.json", report),
            "md": write_text_atomic(out / "report.md", render_markdown(report)),
            "plot": plot_stages(report, out / PLOT_FILE)}
