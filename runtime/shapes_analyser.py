"""Deterministic analyser of shapes-world images: which objects are there, and does the picture
say what its prompt says (a GenEval-style adherence score, numpy only).

Reading an image: pixels whose saturation (max - min channel) exceeds SATURATION are object
pixels (backgrounds are grey); each takes the nearest palette colour; 4-connected components of
one colour with at least MIN_AREA pixels are objects. A component's shape comes from its
bounding box: nearly full -> square; much less mass in the top half than the bottom -> triangle
(the world's triangles point up); otherwise circle. Size: bounding-box side. On the generator's
own images this reads every object back exactly (tests/runtime/test_shapes_world.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .shapes_world import COLOURS, POSITIONS, SIZES, Scene

SATURATION = 70
MIN_AREA = 6
_PALETTE_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in _PALETTE_NAMES], dtype=np.float64)
ATTRIBUTES = ("count", "colour", "shape", "position", "size")


@dataclass(frozen=True)
class Detected:
    colour: str
    shape: str
    area: int
    top: int
    left: int
    height: int
    width: int
    centre: tuple[float, float]  # (row, col) centroid

    @property
    def side(self) -> int:
        return max(self.height, self.width)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a bool mask, each as an (n, 2) array of (row, col)."""
    seen = np.zeros_like(mask, bool)
    h, w = mask.shape
    out = []
    for r0, c0 in zip(*np.nonzero(mask)):
        if seen[r0, c0]:
            continue
        stack, pixels = [(r0, c0)], []
        seen[r0, c0] = True
        while stack:
            r, c = stack.pop()
            pixels.append((r, c))
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    stack.append((rr, cc))
        out.append(np.array(pixels))
    return out


def _shape_of(pixels: np.ndarray, top: int, left: int, height: int, width: int) -> str:
    fill = len(pixels) / (height * width)
    if fill >= 0.9:
        return "square"
    mid = top + height / 2
    upper = int(np.sum(pixels[:, 0] + 0.5 < mid))
    lower = len(pixels) - upper
    return "triangle" if upper < 0.6 * lower else "circle"


def detect(image: np.ndarray) -> list[Detected]:
    """Objects of an (H, W, 3) uint8 RGB image, largest first."""
    img = np.asarray(image).astype(np.int32)
    sat = img.max(axis=2) - img.min(axis=2)
    obj = sat > SATURATION
    dist = ((img[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)
    label = np.argmin(dist, axis=2)
    found = []
    for k, name in enumerate(_PALETTE_NAMES):
        for pix in _components(obj & (label == k)):
            if len(pix) < MIN_AREA:
                continue
            top, left = pix.min(0)
            bottom, right = pix.max(0)
            h, w = int(bottom - top + 1), int(right - left + 1)
            centre = (float(pix[:, 0].mean()), float(pix[:, 1].mean()))
            found.append(Detected(name, _shape_of(pix, int(top), int(left), h, w), len(pix),
                                  int(top), int(left), h, w, centre))
    return sorted(found, key=lambda d: (-d.area, d.top, d.left, d.colour))


def nearest_position(centre: tuple[float, float]) -> str:
    """The named anchor (left/right/top/bottom/centre) closest to a centroid."""
    return min(POSITIONS, key=lambda p: (POSITIONS[p][0] - 0.5 - centre[0]) ** 2 + (POSITIONS[p][1] - 0.5 - centre[1]) ** 2)


def size_name(side: int) -> str:
    """small or large, by the bounding-box side (threshold halfway between the two sizes)."""
    return "large" if side >= (SIZES["small"] + SIZES["large"]) / 2 else "small"


def judge(scene: Scene, image: np.ndarray) -> dict[str, bool | None]:
    """Per-attribute correctness of an image against the prompt's scene (None: not applicable).

    count: number of objects; colour / shape: the multisets of colours / shapes; position:
    single -> nearest anchor, relation -> the first object's centroid is left of / above the
    second's (objects identified by colour); size: single only. overall: every applicable
    attribute right and every (colour, shape) pair bound as the prompt says.
    """
    found = detect(image)
    want = scene.objects
    res: dict[str, bool | None] = {a: None for a in ATTRIBUTES}
    res["count"] = len(found) == len(want)
    res["colour"] = sorted(d.colour for d in found) == sorted(o.colour for o in want)
    res["shape"] = sorted(d.shape for d in found) == sorted(o.shape for o in want)
    pairs_ok = sorted((d.colour, d.shape) for d in found) == sorted((o.colour, o.shape) for o in want)
    if scene.kind == "single":
        res["position"] = bool(found) and nearest_position(found[0].centre) == scene.position
        res["size"] = bool(found) and size_name(found[0].side) == scene.size
    elif scene.kind == "relation":
        a = [d for d in found if d.colour == want[0].colour]
        b = [d for d in found if d.colour == want[1].colour]
        if a and b:
            axis = 1 if scene.relation == "left of" else 0
            res["position"] = a[0].centre[axis] + 2 < b[0].centre[axis]
        else:
            res["position"] = False
    res["overall"] = pairs_ok and all(v for k, v in res.items() if v is not None and k != "overall")
    return res


def summarise(judgements: list[dict[str, bool | None]]) -> dict[str, float | None]:
    """Accuracy per attribute (over the prompts where it applies) and overall."""
    out: dict[str, float | None] = {}
    for key in ATTRIBUTES + ("overall",):
        vals = [j[key] for j in judgements if j.get(key) is not None]
        out[key] = float(np.mean(vals)) if vals else None
    return out
