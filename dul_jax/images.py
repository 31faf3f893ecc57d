"""Writing image grids as PNG (to local paths or gs:// URLs)."""

import io
import math

import numpy as np
from PIL import Image, ImageDraw

from dul_jax import storage


def to_uint8(images: np.ndarray, num_levels: int) -> np.ndarray:
    """Levels in [0, num_levels) to 0..255, so 2-level and 17-level images display right."""
    images = np.asarray(images, np.float64)
    return np.round(images * (255.0 / max(num_levels - 1, 1))).clip(0, 255).astype(np.uint8)


def save_grid(images: np.ndarray, path: str, num_levels: int = 256, cols: int | None = None,
              scale: int = 1, pad: int = 1) -> str:
    """Tile (N, H, W, C) images (C = 1 or 3) into one PNG with `pad` pixels of gray between them."""
    images = to_uint8(images, num_levels)
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 128, np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top:top + h, left:left + w] = img
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return _save_png(Image.fromarray(grid[..., 0] if c == 1 else grid), path)


def _save_png(image: Image.Image, path: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format='PNG')
    storage.write_atomic(path, buffer.getvalue())
    return path


def read_png(path: str) -> np.ndarray:
    """The PNG at `path` (local or gs://) as a uint8 array."""
    return np.asarray(Image.open(io.BytesIO(storage.path(path).read_bytes())))


def label_rows(path: str, labels: list[str], margin: int = 48) -> str:
    """Add a white margin on the left of the PNG at `path` with one label per row of its grid."""
    grid = Image.open(io.BytesIO(storage.path(path).read_bytes())).convert('L')
    labelled = Image.new('L', (grid.width + margin, grid.height), 255)
    labelled.paste(grid, (margin, 0))
    draw, row_height = ImageDraw.Draw(labelled), grid.height / len(labels)
    for i, text in enumerate(labels):
        draw.text((4, int((i + 0.5) * row_height) - 5), text, fill=0)
    return _save_png(labelled, path)


def save_points(points: np.ndarray, reference: np.ndarray, centers: np.ndarray, radius: float,
                title: str, path: str) -> str:
    """A PNG at `path` of 2-D `points` (red) in front of `reference` points (blue), with a circle
    of `radius` around each of `centers`; returns the path. matplotlib's object API, so no
    global backend is chosen for the user."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    figure = Figure(figsize=(5, 5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.scatter(reference[:, 0], reference[:, 1], s=2, c='tab:blue', alpha=0.4, label='data')
    axes.scatter(points[:, 0], points[:, 1], s=2, c='tab:red', alpha=0.5, label='samples')
    for center in centers:
        axes.add_patch(Circle(tuple(center), radius, fill=False, color='black', linewidth=0.5))
    axes.set_aspect('equal')
    axes.set_title(title)
    axes.legend(loc='upper right', markerscale=4)
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=100)
    storage.write_atomic(path, buffer.getvalue())
    return path
