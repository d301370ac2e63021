"""Pictures of a 2-D flow: data against samples, the density on a grid, the trajectory through
the blocks. matplotlib is imported here only, with the file-only Agg backend, so importing
jkofast never needs a display."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ._atomic import replaced_atomically
from .datasets.streaming import seeded_picks

__all__ = ["density_grid", "plot_flow", "PLOT_POINTS"]

# points of the data, the samples and each trajectory panel: enough to show the shape, few
# enough that a PNG of rasterized dots stays small
PLOT_POINTS = 5000
PLOT_FORMATS = ("png", "pdf", "svg")  # by the file's ending
TRAJECTORY_PANELS = 7  # the standardized data and after each of the default 6 blocks


@torch.no_grad()
def density_grid(flow, bounds: tuple[float, float, float, float], resolution: int = 200,
                 steps: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p(x) of a 2-D flow on a resolution x resolution grid of cell centres over
    ``bounds = (xmin, xmax, ymin, ymax)``; returns (X, Y, density), each (res, res)."""
    if flow.dim != 2:
        raise ValueError(f"density_grid needs a 2-D flow, got dim {flow.dim}")
    xmin, xmax, ymin, ymax = bounds
    xs = xmin + (np.arange(resolution) + 0.5) * (xmax - xmin) / resolution
    ys = ymin + (np.arange(resolution) + 0.5) * (ymax - ymin) / resolution
    gx, gy = np.meshgrid(xs, ys)
    p = flow.loc
    pts = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=p.dtype, device=p.device)
    logp = torch.cat([flow.log_prob(chunk, steps=steps) for chunk in pts.split(8192)])
    return gx, gy, logp.exp().reshape(resolution, resolution).cpu().double().numpy()


def _bounds(data: np.ndarray, margin: float = 0.15) -> tuple[float, float, float, float]:
    lo, hi = np.quantile(data, 0.001, axis=0), np.quantile(data, 0.999, axis=0)
    pad = margin * (hi - lo)
    return float(lo[0] - pad[0]), float(hi[0] + pad[0]), float(lo[1] - pad[1]), float(hi[1] + pad[1])


def plot_flow(flow, data: np.ndarray, path: str | Path, *, samples: np.ndarray | None = None,
              n_points: int = PLOT_POINTS, resolution: int = 200, seed: int = 0, title: str = "") -> Path:
    """Save a figure (PNG, PDF or SVG, by ``path``'s ending): data, samples, density (top row)
    and the data pushed through the blocks (bottom row, at most ``TRAJECTORY_PANELS`` panels from the
    standardized data to the latent space); at most ``n_points`` of each, the data's drawn at random by ``seed``."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        raise ValueError(f"plot file {str(path)!r}: end the name in one of {['.' + f for f in PLOT_FORMATS]}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if flow.dim != 2:
        raise ValueError(f"plots are drawn for 2-D data only; this flow has dim {flow.dim}")
    data = np.asarray(data)
    if len(data) > n_points:  # a seeded random subset: a file's first rows may be sorted or grouped
        data = data[seeded_picks(len(data), n_points, seed)]
    if samples is None:
        g = torch.Generator(device=flow.loc.device).manual_seed(seed)
        samples = flow.sample(len(data), generator=g, dtype=torch.float64).detach().cpu().numpy()
    samples = np.asarray(samples)[:n_points]
    bounds = _bounds(data)
    p = flow.loc
    # (in the data's own float dtype: trajectory standardizes in the wider of it and the model's)
    points = torch.as_tensor(data, device=p.device)
    traj = flow.trajectory(points if points.is_floating_point() else points.double())
    # every block of the default 6; of more, an even spread (each panel's title names its block)
    picks = sorted(set(np.linspace(0, len(traj) - 1, min(TRAJECTORY_PANELS, len(traj))).round().astype(int).tolist()))

    fig = plt.figure(figsize=(3.2 * max(3, len(picks)), 6.8))
    grid = fig.add_gridspec(2, max(3, len(picks)))
    dot = dict(s=1.5, alpha=0.5, linewidths=0, rasterized=True)
    ax = fig.add_subplot(grid[0, 0]); ax.scatter(*data.T, c="tab:blue", **dot); ax.set_title("data")
    ax2 = fig.add_subplot(grid[0, 1]); ax2.scatter(*samples.T, c="tab:orange", **dot); ax2.set_title("samples")
    gx, gy, dens = density_grid(flow, bounds, resolution)
    ax3 = fig.add_subplot(grid[0, 2]); ax3.pcolormesh(gx, gy, dens, shading="auto", cmap="viridis")
    ax3.set_title("density")
    for a in (ax, ax2, ax3):
        a.set_xlim(bounds[:2]); a.set_ylim(bounds[2:]); a.set_aspect("equal")
    colour = traj[0][:, 0].cpu().numpy()  # colour by the first standardized coordinate: shows the transport
    for i, k in enumerate(picks):
        a = fig.add_subplot(grid[1, i])
        pts = traj[k].cpu().numpy()
        a.scatter(*pts.T, c=colour, cmap="coolwarm", **dot)
        lim = max(4.0, float(np.quantile(np.abs(pts), 0.999)))
        a.set_xlim(-lim, lim); a.set_ylim(-lim, lim); a.set_aspect("equal")
        a.set_title("standardized data" if k == 0 else f"after block {k}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with replaced_atomically(path) as tmp:  # (a stopped savefig left a truncated file)
            fig.savefig(tmp, dpi=110, format=fmt)
    finally:
        plt.close(fig)  # (pyplot keeps every open figure: a failed save would leak one per call)
    return path

