"""The pictures: one PNG per picture, a panel per layer, each with its legend and colour bars. Drawn per generic
kind of :data:`visattn.contract.INSPECTION_KINDS` (and Grad-CAM), never per family; each kind also gives the numbers
behind its panels for ``summary.json``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..contract import InspectionMap
from ..engine.checkpoint import atomic_write
from .gradcam import GradCAM

MAX_PANELS = 12  # layers drawn per picture; more are thinned evenly (summary.json keeps them all)
COLUMNS = 4
PANEL, TOP, BOTTOM, SIDES = 4.2, 1.2, 0.5, 1.2  # inches: a panel's side, the title's, legend's and sides' margins
QUERY_STYLE = dict(marker="o", markersize=9, markerfacecolor="none", markeredgecolor="cyan", markeredgewidth=2,
                   linestyle="none")
OVERLAY_ALPHA = 0.55


@dataclass
class Scene:
    """What every panel is drawn over: ``image`` (H, W, 3) uint8, the model's input; ``query`` the query point as
    fractions (row, column) of its height and width; ``caption`` the picture's subtitle (model, image, class)."""

    image: np.ndarray
    query: tuple[float, float]
    caption: str

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _query_handle(plt):
    return plt.Line2D([], [], label="query", **QUERY_STYLE)


def _mark_query(ax, scene: Scene) -> None:
    h, w = scene.size
    ax.plot(scene.query[1] * w, scene.query[0] * h, **QUERY_STYLE)


def _image(ax, scene: Scene, title: str) -> None:
    ax.imshow(scene.image)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _overlay(ax, scene: Scene, values: np.ndarray, title: str, label: str, cmap, vmin=None, vmax=None,
             query: bool = True, ticks=None) -> None:
    """``values`` (h, w) over the whole image, with a colour bar labelled ``label``."""
    _image(ax, scene, title)
    h, w = scene.size
    shown = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, alpha=OVERLAY_ALPHA, extent=(0, w, h, 0),
                      interpolation="nearest")
    ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, ticks=ticks).set_label(label, fontsize=8)
    if query:
        _mark_query(ax, scene)


def _cell_size(scene: Scene, grid: tuple[int, int]) -> tuple[float, float]:
    """Pixels per grid cell (rows, columns)."""
    return scene.size[0] / grid[0], scene.size[1] / grid[1]


# ---- routing: the regions a query region routes to
def _routing_numbers(m: InspectionMap) -> dict:
    region = m.data["query_region"]
    return {"grid": list(m.grid), "regions": m.data["n_win"] ** 2, "query_region": region,
            "routed_regions": m.data["regions"][0, region].tolist()}


def _draw_routing(axes, scene: Scene, name: str, m: InspectionMap) -> None:
    from matplotlib.patches import Rectangle

    ax = axes[0]
    s, (rh, rw) = m.data["n_win"], m.data["region_size"]
    cy, cx = _cell_size(scene, m.grid)
    routed = m.data["regions"][0, m.data["query_region"]].tolist()
    _image(ax, scene, f"{name}\n{s}x{s} regions, top {len(routed)} routed")

    def box(region: int, **style) -> Rectangle:
        row, col = divmod(region, s)
        return Rectangle((col * rw * cx, row * rh * cy), rw * cx, rh * cy, **style)

    for region in range(s * s):
        ax.add_patch(box(region, fill=False, edgecolor="white", linewidth=0.6, alpha=0.8))
    for rank, region in enumerate(routed, start=1):
        ax.add_patch(box(region, facecolor="gold", alpha=0.45, edgecolor="none"))
        row, col = divmod(region, s)
        ax.text((col + 0.5) * rw * cx, (row + 0.5) * rh * cy, str(rank), ha="center", va="center", fontsize=8,
                color="black", clip_on=True)
    ax.add_patch(box(m.data["query_region"], fill=False, edgecolor="magenta", linewidth=2.5))
    _mark_query(ax, scene)
    h, w = scene.size
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)


def _routing_legend(plt) -> list:
    from matplotlib.patches import Patch

    return [_query_handle(plt), Patch(fill=False, edgecolor="magenta", linewidth=2, label="query's region"),
            Patch(facecolor="gold", alpha=0.45, label="routed regions (rank)")]


# ---- kept_keys: the keys a query keeps, and each layer's keep ratio
def _kept_numbers(m: InspectionMap) -> dict:
    return {"grid": list(m.grid), "keep_ratio": float(m.data["keep_ratio"]),
            "keys_per_head": m.data["keys"][0].tolist(), "prefix_tokens": m.data["prefix"]}


def _draw_kept(axes, scene: Scene, name: str, m: InspectionMap) -> None:
    keys, prefix = m.data["keys"][0].cpu(), m.data["prefix"]
    heads, (h, w) = keys.shape[0], m.grid
    counts = torch.zeros(prefix + h * w).index_add_(0, keys.flatten(), torch.ones(keys.numel()))
    title = f"{name}\nkeep ratio {float(m.data['keep_ratio']):.3f}"
    if prefix:
        title += f"; class token kept by {int(counts[0])}/{heads} heads"
    grid = counts[prefix:].view(h, w).numpy()
    _overlay(axes[0], scene, np.where(grid > 0, grid, np.nan), title, "heads keeping the key (none: no colour)",
             _discrete("viridis", heads), 0.5, heads + 0.5, ticks=range(1, heads + 1))


def _discrete(cmap: str, colours: int):
    import matplotlib

    return matplotlib.colormaps[cmap].resampled(colours)


def _keep_ratio_panel(ax, maps: dict[str, InspectionMap]) -> None:
    ratios = [float(m.data["keep_ratio"]) for m in maps.values()]
    ax.barh(range(len(ratios)), ratios, color="lightsteelblue")
    for i, name in enumerate(maps):  # names inside the panel: a long one never leaves the figure
        ax.text(0.01, i, name, va="center", fontsize=7)
    ax.set_yticks([])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of query-key pairs attended", fontsize=8)
    ax.set_title(f"keep ratio per layer (mean {np.mean(ratios):.3f})", fontsize=9)
    ax.grid(axis="x", alpha=0.3)


# ---- query_attention: the query's attention weights over the map
def _attention_numbers(m: InspectionMap) -> dict:
    weights = m.data["weights"][0].float().mean(dim=0)
    peak = divmod(int(weights.argmax()), weights.shape[1])
    numbers = {"grid": list(m.grid), "query_cell": list(m.query), "peak_cell": list(peak),
               "weight_sum": float(weights.sum() + m.data["prefix_weights"][0].float().mean(dim=0).sum()),
               "prefix_weights": m.data["prefix_weights"][0].float().mean(dim=0).tolist()}
    if "local_share" in m.data:
        numbers["local_share"] = float(m.data["local_share"][0])
    return numbers


def _draw_attention(axes, scene: Scene, name: str, m: InspectionMap) -> None:
    weights = m.data["weights"][0].float().mean(dim=0).cpu()
    top = float(weights.abs().max()) or 1.0
    title = name
    if "local_share" in m.data:
        title += f"\nlocal residual {float(m.data['local_share'][0]):.0%} of the output"
    prefix = m.data["prefix_weights"][0].float().mean(dim=0)
    if prefix.numel():
        title += f"\nclass token weight {float(prefix[0]):.3f}"
    _overlay(axes[0], scene, weights.numpy(), title, "weight (mean over heads)", "RdBu_r", -top, top)


# ---- gates: channel and spatial gates
def _gates_numbers(m: InspectionMap) -> dict:
    channel, spatial = m.data["channel"][0].float(), m.data["spatial"][0].float()
    return {"grid": list(m.grid), "combine": m.data["combine"], "channels": channel.numel(),
            **{f"{name}_{stat}": float(getattr(t, stat)()) for name, t in (("channel", channel), ("spatial", spatial))
               for stat in ("min", "mean", "max")}}


def _draw_gates(axes, scene: Scene, name: str, m: InspectionMap) -> None:
    rule = "x (A_ch + A_sp)" if m.data["combine"] == "sum" else "x A_ch A_sp"
    spatial = m.data["spatial"][0].float().cpu().numpy()
    _overlay(axes[0], scene, spatial, f"{name}\nspatial gate A_sp; output = {rule}", "A_sp", "viridis",
             query=False)
    channel = np.sort(m.data["channel"][0].float().cpu().numpy())[::-1]
    ax = axes[1]
    ax.fill_between(range(len(channel)), channel, color="tab:orange", alpha=0.6, step="mid")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, max(len(channel) - 1, 1))
    ax.set_xlabel("channel (sorted)", fontsize=8)
    ax.set_ylabel("A_ch", fontsize=8)
    ax.set_title(f"channel gate A_ch: mean {channel.mean():.2f} of {len(channel)}", fontsize=9)
    ax.grid(alpha=0.3)


# ---- prompt_usage: which prompts the tokens chose
_POOL_COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:purple")


def _usage_numbers(m: InspectionMap) -> dict:
    return {"tokens": m.data["tokens"], "pools": dict(m.data["pools"]), "usage": m.data["usage"][0].tolist()}


def _draw_usage(axes, scene: Scene, name: str, m: InspectionMap) -> None:
    ax = axes[0]
    usage = m.data["usage"][0].float().cpu().numpy()
    start = 0
    for (_, count), colour in zip(m.data["pools"], _POOL_COLOURS, strict=False):
        ax.bar(np.arange(start, start + count), usage[start:start + count], color=colour, width=0.85)
        start += count
    ax.set_xlabel("prompt", fontsize=8)
    ax.set_ylabel("tokens (1/k per chosen prompt)", fontsize=8)
    ax.set_title(f"{name}: {m.data['tokens']} tokens", fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def _usage_legend(plt, maps: dict[str, InspectionMap]) -> list:
    from matplotlib.patches import Patch

    pools = next(iter(maps.values())).data["pools"]
    return [Patch(color=colour, label=f"{pool} pool") for (pool, _), colour in zip(pools, _POOL_COLOURS,
                                                                                    strict=False)]


@dataclass(frozen=True)
class Style:
    """How one kind is drawn: its picture's title, panels per layer, the panel drawer, the numbers per layer, an
    optional panel over all layers and the figure legend's handles."""

    title: str
    panels: int
    draw: Callable
    numbers: Callable[[InspectionMap], dict]
    overall: Callable | None = None
    legend: Callable | None = None


STYLES: dict[str, Style] = {
    "routing": Style("Routed regions of the query's region", 1, _draw_routing, _routing_numbers,
                     legend=lambda plt, maps: _routing_legend(plt)),
    "kept_keys": Style("Keys the query keeps", 1, _draw_kept, _kept_numbers, overall=_keep_ratio_panel,
                       legend=lambda plt, maps: [_query_handle(plt)]),
    "query_attention": Style("The query's attention over the map", 1, _draw_attention, _attention_numbers,
                             legend=lambda plt, maps: [_query_handle(plt)]),
    "gates": Style("Polarized gates", 2, _draw_gates, _gates_numbers),
    "prompt_usage": Style("Prompts the tokens chose", 1, _draw_usage, _usage_numbers, legend=_usage_legend),
}


def spread(names: list[str], limit: int = MAX_PANELS) -> list[str]:
    """At most ``limit`` of ``names``, evenly spaced, the first and last included."""
    if len(names) <= limit:
        return names
    return [names[round(i * (len(names) - 1) / (limit - 1))] for i in range(limit)]


def _figure(plt, panels: int):
    columns = min(COLUMNS, panels)
    rows = -(-panels // columns)
    width, height = PANEL * columns + SIDES, PANEL * rows + TOP + BOTTOM
    fig, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=0.3 * SIDES / width, right=1 - 0.7 * SIDES / width, top=1 - TOP / height,
                        bottom=BOTTOM / height, wspace=0.55, hspace=0.55)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _save(plt, fig, path: str, title: str, caption: str, handles: list) -> None:
    fig.suptitle(f"{title}\n{caption}", fontsize=11, y=1 - 0.15 / fig.get_figheight(), va="top")
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def draw_kind(kind: str, maps: dict[str, InspectionMap], scene: Scene, path: str) -> dict:
    """Draw the ``maps`` of one kind (by layer) as the PNG ``path``; returns the numbers behind it, by layer (every
    layer's, also where more than :data:`MAX_PANELS` layers are thinned in the picture)."""
    style = STYLES[kind]
    plt = _pyplot()
    shown = spread(list(maps), MAX_PANELS)
    panels = style.panels * len(shown) + (style.overall is not None)
    fig, axes = _figure(plt, panels)  # COLUMNS is a multiple of every kind's panels: a layer's panels share a row
    for i, name in enumerate(shown):
        style.draw(axes[i * style.panels:(i + 1) * style.panels], scene, name, maps[name])
    if style.overall is not None:
        style.overall(axes[panels - 1], maps)
    title = style.title + (f" ({len(shown)} of {len(maps)} layers; choose with --layer)" if len(shown) < len(maps)
                           else "")
    _save(plt, fig, path, title, scene.caption, style.legend(plt, maps) if style.legend else [])
    return {name: style.numbers(m) for name, m in maps.items()}


def draw_gradcam(cams: list[GradCAM], scene: Scene, label: str, path: str) -> dict:
    """The input image and each layer's Grad-CAM of the top class (``label`` names it) as the PNG ``path``; returns
    the numbers behind it, by layer."""
    plt = _pyplot()
    fig, axes = _figure(plt, 1 + len(cams))
    _image(axes[0], scene, "input")
    numbers = {}
    for ax, cam in zip(axes[1:], cams, strict=False):
        values = cam.cam[0].cpu()
        top = float(values.max())
        _overlay(ax, scene, (values / top if top > 0 else values).numpy(), f"{cam.layer}\n{values.shape[0]}x"
                 f"{values.shape[1]} map", "Grad-CAM (relative)", "jet", 0.0, 1.0, query=False)
        numbers[cam.layer] = {"grid": list(values.shape), "class": cam.targets[0], "label": label,
                              "score": cam.scores[0], "peak_cell": list(divmod(int(values.argmax()),
                                                                               values.shape[1])),
                              "max": top}
    _save(plt, fig, path, f"Grad-CAM of {label} (score {cams[0].scores[0]:.3f})", scene.caption, [])
    return numbers
