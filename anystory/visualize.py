"""Routing maps as pictures (paper Fig. 5, 6) and as reference-prompted segmentation masks (§3.3, end).

Input is the pipeline's ``routing_maps``: per denoising step, per cross-attention layer, (B, N+1, h, w), the last
of the N+1 being the background. All helpers return numpy arrays (uint8 RGB images, bool masks).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch
import torch.nn.functional as F

# One colour per subject (overlays); the map ramp goes from dark blue (0) to yellow (1) as in Fig. 5.
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
                    [240, 50, 230], [210, 245, 60]], np.uint8)
_LOW, _HIGH = np.array([68, 1, 84], np.float32), np.array([253, 231, 37], np.float32)

Maps = Sequence[torch.Tensor]  # one step: per layer (B, N+1, h, w)


def _steps(routing_maps: Sequence[Maps] | Maps, steps: Sequence[int] | None) -> list[Maps]:
    """The chosen steps (all by default) of a [step][layer] list; one step's [layer] list counts as one step."""
    all_steps = [routing_maps] if isinstance(routing_maps[0], torch.Tensor) else list(routing_maps)
    return all_steps if steps is None else [all_steps[s] for s in steps]


def average_routing_maps(routing_maps: Sequence[Maps] | Maps, size: tuple[int, int],
                         steps: Sequence[int] | None = None, layers: Sequence[int] | None = None) -> torch.Tensor:
    """Mean of M over the chosen steps and layers (all by default), each resized (bilinear) to ``size``:
    (B, N+1, H, W). ``routing_maps`` is the pipeline's [step][layer] list, or one step's [layer] list."""
    resized = [F.interpolate(step[layer].float(), size=size, mode="bilinear", align_corners=False)
               for step in _steps(routing_maps, steps)
               for layer in (layers if layers is not None else range(len(step)))]
    return torch.stack(resized).mean(0)


def segment_from_routing_maps(routing_maps: Sequence[Maps] | Maps, size: tuple[int, int],
                              steps: Sequence[int] | None = None, layers: Sequence[int] | None = None) -> np.ndarray:
    """Reference-prompted segmentation (§3.3): average the maps over steps and layers, argmax over the N+1 axis;
    returns (B, N, H, W) bool, one mask per subject (the background takes the rest; masks never overlap)."""
    mean = average_routing_maps(routing_maps, size, steps, layers)
    labels = mean.argmax(1)
    return (labels[:, None] == torch.arange(mean.shape[1] - 1)[None, :, None, None]).numpy()


def _cell_shape(maps: Maps, cell: int) -> tuple[int, int]:
    """Every layer's map is scaled to one cell: ``cell`` pixels high, as wide as the largest map's aspect keeps."""
    h, w = max((m.shape[-2:] for m in maps), key=lambda hw: hw[0] * hw[1])
    return cell, max(1, round(cell * w / h))


def routing_grid(routing_maps: Sequence[Maps] | Maps, steps: Sequence[int] | None = None, sample: int = 0,
                 cell: int = 32, rows: int = 10, gap: int = 4, background: bool = False) -> np.ndarray:
    """Fig. 5: a row of panels per subject, a column per chosen denoising step (all by default); inside a panel the
    maps of every cross-attention layer in order, top-to-bottom then left-to-right (``rows`` per column), each
    scaled to one cell (``cell`` pixels high, the largest map's aspect), dark blue 0 → yellow 1. The background
    map (the complement of the others) is left out unless ``background``. Panels are ``gap`` white pixels apart.
    Returns (H, W, 3) uint8; ``labelled_routing_grid`` adds step, layer and subject labels."""
    chosen = _steps(routing_maps, steps)
    n = chosen[0][0].shape[1] - (0 if background else 1)
    ch, cw = _cell_shape(chosen[0], cell)
    columns = -(-len(chosen[0]) // rows)
    ph, pw = rows * ch, columns * cw
    grid = np.full((n * (ph + gap) - gap, len(chosen) * (pw + gap) - gap, 3), 255, np.uint8)
    for k, maps in enumerate(chosen):
        for layer, m in enumerate(maps):
            cells = F.interpolate(m[sample : sample + 1, :n].float(), size=(ch, cw), mode="nearest")[0].numpy()
            col, row = divmod(layer, rows)
            x = k * (pw + gap) + col * cw
            for i in range(n):
                y = i * (ph + gap) + row * ch
                ramp = cells[i, ..., None].clip(0, 1)
                grid[y : y + ch, x : x + cw] = (_LOW + ramp * (_HIGH - _LOW)).astype(np.uint8)
    return grid


def labelled_routing_grid(routing_maps: Sequence[Maps] | Maps, steps: Sequence[int], names: Sequence[str],
                          cell: int = 32, rows: int = 10, gap: int = 4, background: bool = False,
                          sample: int = 0) -> np.ndarray:
    """``routing_grid`` with a margin that says what each tile is: ``step <s>`` over each column of panels (s the
    denoising step's index), the layer range of each column of cells (``0-9``: layers 0 to 9, top to bottom)
    under it, and each row's name (``names``, one per subject row, plus the background's with ``background``)
    on the left."""
    grid = routing_grid(routing_maps, steps, sample, cell, rows, gap, background)
    chosen = _steps(routing_maps, steps)
    layers, (ch, cw) = len(chosen[0]), _cell_shape(chosen[0], cell)
    columns = -(-layers // rows)
    font = PIL.ImageFont.load_default()
    line = font.getbbox("Ag")[3] + 3
    left = max(int(font.getlength(name)) for name in names) + 2 * gap
    canvas = PIL.Image.new("RGB", (left + grid.shape[1], 2 * line + gap + grid.shape[0]), "white")
    canvas.paste(PIL.Image.fromarray(grid), (left, 2 * line + gap))
    draw = PIL.ImageDraw.Draw(canvas)
    pw = columns * cw
    for k, step in enumerate(steps):
        x = left + k * (pw + gap)
        draw.text((x + pw / 2, 0), f"step {step}", fill="black", font=font, anchor="ma")
        for col in range(columns):
            span = f"{col * rows}-{min(layers, (col + 1) * rows) - 1}"
            draw.text((x + col * cw + cw / 2, line), span, fill="dimgray", font=font, anchor="ma")
    for i, name in enumerate(names):
        y = 2 * line + gap + i * (rows * ch + gap) + rows * ch / 2
        draw.text((gap, y), name, fill="black", font=font, anchor="lm")
    return np.asarray(canvas)


def routing_overlay(image, routing_maps: Sequence[Maps] | Maps, sample: int = 0, steps: Sequence[int] | None = None,
                    layers: Sequence[int] | None = None, alpha: float = 0.5) -> np.ndarray:
    """The segmentation of ``segment_from_routing_maps`` over ``image`` (PIL or HxWx3 uint8): each subject's region
    tinted with its ``PALETTE`` colour, the background untouched. Returns (H, W, 3) uint8."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, PIL.Image.Image) else image, np.float32)
    masks = segment_from_routing_maps(routing_maps, rgb.shape[:2], steps, layers)[sample]
    out = rgb.copy()
    for i, mask in enumerate(masks):
        out[mask] = (1 - alpha) * rgb[mask] + alpha * PALETTE[i % len(PALETTE)]
    return out.round().astype(np.uint8)
