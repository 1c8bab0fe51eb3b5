"""Pictures of a model and its training: attention heatmaps, positional encodings, training curves.

matplotlib is an optional extra (``pip install -e ".[plot]"``), imported inside the functions that need it.
Figures are built with the object-oriented ``matplotlib.figure.Figure`` (no pyplot): nothing global is changed,
no display is needed, and a notebook can show the returned figure as it is. Every figure has a fixed size in
inches (constrained layout fits the panels inside it), so a PNG's pixel size is that size times its dpi.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from transformer.errors import DataError, require_extra, write_error
from transformer.model.embeddings import sinusoidal_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
CELL_INCHES = 0.2  # one attention cell: room for a piece label in LABEL_POINTS
MIN_PANEL_INCHES = 1.6
MAX_FIGURE_INCHES = 26.0  # the widest/tallest picture; cells shrink past it
LABEL_POINTS = 7
RUN_METRICS = (  # (split, key, panel title) of the panels of ``run_figure``
    ("train", "loss", "training loss (label-smoothed)"),
    ("valid", "loss", "validation loss (label-smoothed)"),
    ("valid", "bleu", "validation BLEU (greedy)"),
    ("train", "lr", "learning rate"),
)


def _figure_class() -> type[Figure]:
    """matplotlib's ``Figure``, imported only now.

    Raises:
        MissingExtraError: matplotlib is not installed; the message gives the install command.
    """
    require_extra("matplotlib", "plot", "plotting")
    from matplotlib.figure import Figure

    return Figure


def save_png(figure: Figure, path: str | Path, *, dpi: int = DPI) -> tuple[int, int]:
    """Write ``figure`` as a PNG; returns its (width, height) in pixels.

    Raises:
        OutputError: the file cannot be written (the reason and what to do in one line).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=dpi, format="png")
    except OSError as err:
        raise write_error(path, err, what="picture") from None
    width, height = figure.get_size_inches() * dpi
    return round(width), round(height)


# ---------------------------------------------------------------------------------------------- attention
def attention_figure_size(n_rows: int, n_cols: int, n_queries: int, n_keys: int) -> tuple[float, float]:
    """(width, height) in inches of ``n_rows`` x ``n_cols`` attention panels of ``n_queries`` x ``n_keys`` cells.

    A cell is ``CELL_INCHES`` square, a panel at least ``MIN_PANEL_INCHES``; room is added for the piece
    labels (left, bottom), the titles and the colour bar; cells shrink to keep within ``MAX_FIGURE_INCHES``.
    """
    label_room, title_room, bar_room, gap = 1.1, 0.7, 0.7, 0.15
    cell = min(
        CELL_INCHES,
        (MAX_FIGURE_INCHES - label_room - bar_room) / (n_cols * max(n_keys, 1)) - gap / max(n_keys, 1),
        (MAX_FIGURE_INCHES - label_room - title_room) / (n_rows * max(n_queries, 1)) - gap / max(n_queries, 1),
    )
    panel_w, panel_h = max(MIN_PANEL_INCHES, cell * n_keys), max(MIN_PANEL_INCHES, cell * n_queries)
    width = label_room + bar_room + n_cols * (panel_w + gap)
    height = label_room + title_room + n_rows * (panel_h + gap + 0.25)  # 0.25: each panel's own title
    return round(min(width, MAX_FIGURE_INCHES), 2), round(min(height, MAX_FIGURE_INCHES), 2)


def attention_figure(
    weights: torch.Tensor,
    query_labels: Sequence[str],
    key_labels: Sequence[str],
    *,
    title: str,
    layers: Sequence[int] | None = None,
    query_axis: str = "target",
    key_axis: str = "source",
) -> Figure:
    """Heatmaps of (L, H, T, S) attention probabilities: a row per layer, a column per head and their mean.

    Args:
        weights: (L, H, T, S) probabilities (e.g. ``SentenceAttention.cross``).
        query_labels, key_labels: the T row and S column labels (pieces).
        title: the figure's title (e.g. the sentence pair).
        layers: the 1-based layer numbers of the L rows, for the labels (default 1..L).
        query_axis, key_axis: what rows and columns are, for the axis labels.
    """
    figure_class = _figure_class()
    n_layers, n_heads, n_queries, n_keys = weights.shape
    if (len(query_labels), len(key_labels)) != (n_queries, n_keys):
        raise ValueError(f"{len(query_labels)} x {len(key_labels)} labels for {n_queries} x {n_keys} attention")
    layers = list(layers) if layers is not None else list(range(1, n_layers + 1))
    panels = torch.cat([weights, weights.mean(dim=1, keepdim=True)], dim=1).float().cpu()  # heads + their mean
    n_cols = n_heads + 1
    figure = figure_class(figsize=attention_figure_size(n_layers, n_cols, n_queries, n_keys), layout="constrained")
    axes = figure.subplots(n_layers, n_cols, squeeze=False, sharex=True, sharey=True)
    image = None
    for row in range(n_layers):
        for col in range(n_cols):
            ax = axes[row][col]
            image = ax.imshow(panels[row, col].numpy(), cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto",
                              interpolation="nearest")
            head = f"head {col + 1}" if col < n_heads else "mean of heads"
            ax.set_title(f"layer {layers[row]}, {head}", fontsize=9, fontweight="bold" if col == n_heads else None)
            ax.set_xticks(range(n_keys))
            ax.set_yticks(range(n_queries))
            ax.tick_params(length=0, labelsize=LABEL_POINTS)
        axes[row][0].set_yticklabels(query_labels)
        axes[row][0].set_ylabel(query_axis, fontsize=9)
    for col in range(n_cols):
        axes[-1][col].set_xticklabels(key_labels, rotation=90)
        axes[-1][col].set_xlabel(key_axis, fontsize=9)
    figure.colorbar(image, ax=axes, shrink=0.6, pad=0.01, label="attention probability")
    figure.suptitle(title, fontsize=11)
    return figure


# ---------------------------------------------------------------------------------------------- positions
def positions_figure(table: torch.Tensor | None = None, *, d_model: int = 512, length: int = 100) -> Figure:
    """The positional encoding: a heatmap (positions x dimensions), a few dimensions as curves, and the dot
    product between positions.

    For the sinusoids, PE(p) . PE(q) = sum_i cos(w_i (p - q)) depends only on the offset p - q (the bands
    parallel to the diagonal), and PE(p + k) is a fixed rotation of PE(p) for every p: a linear map of the
    encoding can attend by relative offset, which is why the paper chose them.

    Args:
        table: a (length, d_model) encoding to draw (e.g. a model's learned one); None: the sinusoidal one.
        d_model, length: the size of the sinusoidal table when ``table`` is None.
    """
    figure_class = _figure_class()
    learned = table is not None
    table = (table if learned else sinusoidal_table(length, d_model)).detach().float().cpu()
    length, d_model = table.shape
    figure = figure_class(figsize=(16.0, 4.8), layout="constrained")
    heat, curves, similarity = figure.subplots(1, 3, gridspec_kw={"width_ratios": [1.25, 1.2, 1.0]})

    # Even dimensions (sin) above odd ones (cos): interleaved, neighbouring rows would alternate and blur.
    by_wave = torch.cat([table[:, 0::2], table[:, 1::2]], dim=1).T  # (D, P)
    image = heat.imshow(by_wave.numpy(), cmap="RdBu_r", vmin=-1.0, vmax=1.0, aspect="auto", interpolation="nearest")
    half = (d_model + 1) // 2
    heat.axhline(half - 0.5, color="black", linewidth=0.8)
    rows = [r for r in range(0, d_model, max(1, d_model // 8))]
    heat.set_yticks(rows, [str(2 * r if r < half else 2 * (r - half) + 1) for r in rows])
    heat.set(xlabel="position", title=f"encoding of positions 0..{length - 1} (d_model={d_model})",
             ylabel="dimension (sin above the line, cos below)")
    figure.colorbar(image, ax=heat, shrink=0.8)

    for d in _curve_dimensions(d_model, length, learned):
        wave = "sin" if d % 2 == 0 else "cos"
        label = f"dim {d}" if learned else f"dim {d} ({wave}, period {_period(d, d_model):.0f})"
        curves.plot(range(length), table[:, d].numpy(), label=label, linewidth=1.4)
    curves.set(xlabel="position", ylabel="value", title="a few dimensions", ylim=(-1.15, 2.1))
    curves.legend(fontsize=8, loc="upper center", ncol=2)

    dots = table @ table.T  # (P, P)
    image = similarity.imshow(dots.numpy(), cmap="viridis", interpolation="nearest")
    similarity.set(xlabel="position q", ylabel="position p", title="PE(p) \u00b7 PE(q): a function of p - q only"
                   if not learned else "PE(p) \u00b7 PE(q)")
    figure.colorbar(image, ax=similarity, shrink=0.8)
    kind = "learned" if learned else "sinusoidal"
    figure.suptitle(f"{kind} positional encoding", fontsize=12)
    return figure


def _period(dim: int, d_model: int) -> float:
    """The wavelength, in positions, of sinusoidal dimension ``dim``: 2 pi 10000^(2i / d_model), 2i = dim // 2 * 2."""
    return 2 * math.pi * 10000 ** ((dim - dim % 2) / d_model)


def _curve_dimensions(d_model: int, length: int, learned: bool) -> list[int]:
    """Dimensions worth drawing as curves: for the sinusoids, the sin of wavelengths near length/5, length/2.5,
    length and 4 x length, and the cos partner of the first (a quarter period behind)."""
    if learned:
        return sorted({0, 1, d_model // 4, d_model // 2, d_model - 1})
    dims = []
    for period in (length / 5, length / 2.5, length, 4 * length):
        i = round(d_model / 2 * math.log(max(period, 2 * math.pi) / (2 * math.pi)) / math.log(10000))
        dims.append(min(2 * i, d_model - 2))
    dims.insert(1, dims[0] + 1)
    return sorted(set(dims), key=dims.index)


# ------------------------------------------------------------------------------------------ training runs
def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (``run`` is the run folder or the file itself).

    A last line cut short (a run still writing it) is skipped; any other unreadable line is an error.

    Raises:
        DataError: no such file, or a line that is not a JSON record (named by file and line).
    """
    path = Path(run)
    if path.is_dir() or path.suffix != ".jsonl":
        path = path / "metrics.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path} not found: give a run folder written by `transformer train`") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it yet: the trainer is writing it
                break
            raise DataError(f"{path} line {number} is not a JSON record: {line[:60]!r}") from None
        if not isinstance(record, dict) or "step" not in record or "split" not in record:
            raise DataError(f"{path} line {number} is not a metrics record (it needs 'split' and 'step')")
        records.append(record)
    return records


def directions_of(records: list[dict[str, Any]]) -> list[str]:
    """The directions of a multilingual run's validation records (their ``"en-de/loss"`` keys), in the order
    they come; [] for a bilingual run."""
    found: dict[str, None] = {}
    for record in records:
        if record.get("split") == "valid":
            found.update((key.split("/")[0], None) for key in record if key.count("/") == 1)
    return list(found)


def _series(records: list[dict[str, Any]], split: str, key: str, x: str) -> tuple[list[float], list[float]]:
    points = [(r[x], r[key]) for r in records if r.get("split") == split and key in r and x in r]
    return [p[0] for p in points], [p[1] for p in points]


def run_figure(runs: Sequence[tuple[str, list[dict[str, Any]]]]) -> Figure:
    """Training loss, validation loss, validation BLEU and learning rate of one or more runs, against updates
    (top row) and against wall-clock minutes (bottom row); one colour and legend entry per run.

    A multilingual run's validation panels also draw each direction (``"run en-de"``, dashed, a colour each)
    beside the run's mean over them (``"run"``, solid).

    Args:
        runs: (name, records of ``read_metrics``) of each run.
    """
    figure_class = _figure_class()
    figure = figure_class(figsize=(17.0, 7.5), layout="constrained")
    axes = figure.subplots(2, len(RUN_METRICS), squeeze=False)
    lines = _run_lines(runs)
    for row, (x, x_label, scale) in enumerate((("step", "updates", 1.0), ("time", "wall-clock minutes", 60.0))):
        for col, (split, key, title) in enumerate(RUN_METRICS):
            ax = axes[row][col]
            drawn = False
            for label, records, direction, color in lines:
                if direction and split != "valid":
                    continue
                xs, ys = _series(records, split, f"{direction}/{key}" if direction else key, x)
                if xs:
                    marker = "o" if split == "valid" and len(xs) <= 40 else None
                    ax.plot([v / scale for v in xs], ys, color=color, marker=marker, markersize=3,
                            linewidth=1.0 if direction else 1.3, linestyle="--" if direction else "-", label=label)
                    drawn = True
            if not drawn:
                ax.text(0.5, 0.5, f"no {split} {key} in these runs", ha="center", va="center", transform=ax.transAxes,
                        color="gray")
            ax.set(title=title, xlabel=x_label)
            ax.grid(alpha=0.3)
            if key == "lr":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    handles: dict[str, Any] = {}
    for ax in axes[0]:  # a run may lack some panel's metric: gather every run's line
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        axes[0][0].legend(handles.values(), handles.keys(), fontsize=9, title="run", title_fontsize=9)
    return figure


def _run_lines(runs: Sequence[tuple[str, list[dict[str, Any]]]]) -> list[tuple[str, list[dict[str, Any]], str, str]]:
    """(label, records, direction or "", colour) of each line: every run's own, then its directions'. Runs take
    the first colours (as they did before directions existed), the directions the colours after them."""
    lines = [(name, records, "", f"C{i}") for i, (name, records) in enumerate(runs)]
    for name, records in runs:
        for direction in directions_of(records):
            lines.append((f"{name} {direction}", records, direction, f"C{len(lines)}"))
    return lines
