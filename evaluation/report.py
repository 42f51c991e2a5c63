"""Reports: markdown with PNG figures, written atomically into one directory.

`write_report(directory, markdown, figures)` renders every matplotlib figure to
``<directory>/<name>.png`` and the markdown to ``<directory>/report.md`` inside a temporary
directory that is renamed onto `directory` only once everything is written, so a failed run leaves
the previous report (or nothing), never half of one. Figures are `matplotlib.figure.Figure`s built
without pyplot: rendered by the Agg canvas, no display, no global figure state (thread-safe).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from matplotlib.figure import Figure

from feedcore.io import atomic_path

SIMULATION_BANNER = (
    "> **SIMULATION.** Every number in this report comes from simulated users (`evaluation.simulator`):\n"
    "> their responses are generated from held-out real interactions with documented noise, not\n"
    "> observed from people. Use it to test the pipeline and the analysis, not to decide a launch.\n"
)


def write_report(directory: str | Path, markdown: str, figures: dict[str, Figure],
                 files: dict[str, str] | None = None) -> Path:
    """Write ``report.md``, one ``<name>.png`` per figure and any other text `files` (name ->
    content) into `directory`, replaced whole."""
    directory = Path(directory)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        for name, figure in figures.items():
            figure.savefig(tmp / f"{name}.png", dpi=110, bbox_inches="tight")  # Agg canvas: headless
        (tmp / "report.md").write_text(markdown)
    return directory / "report.md"


def figure_png(figure: Figure) -> bytes:
    """A figure as PNG bytes (for notebooks: ``IPython.display.Image(data=figure_png(fig))``)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def fmt(value: float, digits: int = 4) -> str:
    """A number for a table: NaN as 'n/a', small p-values in scientific notation."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value != 0 and abs(value) < 10 ** -(digits - 1):
        return f"{value:.2e}"
    return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"


def pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:+.2f}%"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
