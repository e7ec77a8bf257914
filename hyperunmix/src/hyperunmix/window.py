"""Part of a scene to fit on: `row0:row1,col0:col1` (0-based, end excluded, as in Python slices).

Fitting on a window and then applying the model to the whole scene (`transform`) unmixes a scene
too large, or too slow, to fit on whole, or fits on a region of interest only.
"""
from __future__ import annotations


def parse_window(text: str, height: int, width: int) -> tuple[slice, slice]:
    """'100:400,0:250' -> (slice(100, 400), slice(0, 250)), checked against a height x width scene;
    an empty bound means the edge ('100:,:250')."""
    parts = [part.strip() for part in str(text).split(",")]
    if len(parts) != 2 or any(part.count(":") != 1 for part in parts):
        raise ValueError(f"window {text!r}: expected 'row0:row1,col0:col1', e.g. '0:200,100:300'")
    bounds = []
    for part, size, axis in zip(parts, (height, width), ("row", "column")):
        low_text, high_text = part.split(":")
        try:
            low = int(low_text) if low_text.strip() else 0
            high = int(high_text) if high_text.strip() else size
        except ValueError:
            raise ValueError(f"window {text!r}: {axis} bounds {part!r} must be whole numbers") from None
        if not 0 <= low < high <= size:
            raise ValueError(f"window {text!r}: {axis}s {low}:{high} must satisfy 0 <= start < end <= {size} "
                             f"(the scene has {size} {axis}s)")
        bounds.append(slice(low, high))
    return bounds[0], bounds[1]
