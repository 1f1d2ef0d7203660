"""A synthetic compositional world: coloured shapes on grey backgrounds, with captions.

Deterministic from a seed, generated on the fly (numpy only, no files): the training data of the
`infinity-shapes` model and the ground truth of its prompt-adherence analyser
(`stagevar.runtime.shapes_analyser`). Images are IMAGE_SIZE x IMAGE_SIZE RGB uint8.

Scenes are of three kinds, each a caption template with paraphrases:
- single:   one object of a size at a named position ("a large red circle on the left");
- relation: two objects, one left of / above the other ("a red circle left of a blue square");
- count:    two or three equal small objects ("three green triangles").
Backgrounds are grey only (plain or textured: stripes, checker, noise), objects saturated
palette colours, so a pixel's class (background / which colour) is unambiguous. Objects never
touch (2-pixel gap), so connected components are objects.

Some (colour, shape) pairs never occur in training scenes (HELD_OUT_PAIRS): evaluation prompts
built from them measure compositional generalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (160, 60, 210),
    "cyan": (40, 205, 215),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 8, "large": 14}  # bounding-box side in pixels
COUNT_SIDE = 7  # side of each object in count scenes
POSITIONS = {  # named anchor -> (row, col) centre of a single object
    "left": (16, 8), "right": (16, 24), "top": (8, 16), "bottom": (24, 16), "centre": (16, 16),
}
RELATIONS = ("left of", "above")
COUNT_WORDS = {2: "two", 3: "three"}
KINDS = ("single", "relation", "count")

#: (colour, shape) pairs kept out of training; evaluation prompts use them.
HELD_OUT_PAIRS = frozenset({("red", "triangle"), ("blue", "circle"), ("yellow", "square"),
                            ("green", "triangle")})


@dataclass(frozen=True)
class WorldObject:
    colour: str
    shape: str
    side: int  # bounding-box side in pixels
    row: int  # top-left corner of the bounding box
    col: int

    @property
    def centre(self) -> tuple[float, float]:
        return self.row + (self.side - 1) / 2, self.col + (self.side - 1) / 2


@dataclass(frozen=True)
class Scene:
    """What a caption asserts plus where the renderer put the objects."""

    kind: str  # single | relation | count
    objects: tuple[WorldObject, ...]
    background: str  # plain | stripes | checker | noise
    background_seed: int
    size: str = ""  # single: small | large
    position: str = ""  # single: a POSITIONS key
    relation: str = ""  # relation: a RELATIONS entry; objects[0] <relation> objects[1]

    @property
    def count(self) -> int:
        return len(self.objects)


# ---- captions ------------------------------------------------------------------------------
_POSITION_PHRASES = {"left": ("on the left", "at the left"), "right": ("on the right", "at the right"),
                     "top": ("at the top", "near the top"), "bottom": ("at the bottom", "near the bottom"),
                     "centre": ("in the centre", "in the middle")}
_PREFIXES = ("a", "a picture of a", "an image of a")


def caption(scene: Scene, variant: int = 0) -> str:
    """The scene's caption; `variant` picks a paraphrase (any int, taken modulo the choices)."""
    o = scene.objects
    if scene.kind == "single":
        pre = _PREFIXES[variant % 3]
        pos = _POSITION_PHRASES[scene.position][(variant // 3) % 2]
        return f"{pre} {scene.size} {o[0].colour} {o[0].shape} {pos}"
    if scene.kind == "relation":
        a, b = o
        if scene.relation == "left of":
            rel = ("left of", "to the left of")[variant % 2]
        else:
            rel = ("above", "on top of")[variant % 2]
        return f"a {a.colour} {a.shape} {rel} a {b.colour} {b.shape}"
    word = COUNT_WORDS[scene.count]
    return (f"{word} {o[0].colour} {o[0].shape}s", f"a picture of {word} {o[0].colour} {o[0].shape}s")[variant % 2]


# ---- sampling scenes -----------------------------------------------------------------------
def _pair(rng: np.random.Generator, held_out: bool) -> tuple[str, str]:
    """A (colour, shape) pair from the training pairs, or from the held-out ones."""
    pool = sorted(HELD_OUT_PAIRS) if held_out else [
        (c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS]
    return pool[int(rng.integers(len(pool)))]


def sample_scene(rng: np.random.Generator, held_out: bool = False, kind: str | None = None) -> Scene:
    """A random scene. `held_out=True`: every scene holds at least one held-out pair."""
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    background = ("plain", "stripes", "checker", "noise")[int(rng.integers(4))]
    bg_seed = int(rng.integers(2**31))
    if kind == "single":
        colour, shape = _pair(rng, held_out)
        size = ("small", "large")[int(rng.integers(2))]
        position = tuple(POSITIONS)[int(rng.integers(len(POSITIONS)))]
        side = SIZES[size]
        r, c = POSITIONS[position]
        jr, jc = (int(v) for v in rng.integers(-1, 2, size=2))
        obj = WorldObject(colour, shape, side, _clip(r - side // 2 + jr, side), _clip(c - side // 2 + jc, side))
        return Scene(kind, (obj,), background, bg_seed, size=size, position=position)
    if kind == "relation":
        first = _pair(rng, held_out)
        second = _pair(rng, False)
        while second[0] == first[0]:  # different colours, so "which is which" is readable
            second = _pair(rng, False)
        if held_out and rng.integers(2):
            first, second = second, first
        relation = RELATIONS[int(rng.integers(2))]
        side = 10
        along = (int(rng.integers(2, 5)), int(rng.integers(18, 21)))  # first before second
        across = int(rng.integers(9, 13))
        objs = []
        for (colour, shape), a in zip((first, second), along):
            r, c = (across, a) if relation == "left of" else (a, across)
            objs.append(WorldObject(colour, shape, side, r, c))
        return Scene(kind, tuple(objs), background, bg_seed, relation=relation)
    colour, shape = _pair(rng, held_out)
    n = int(rng.integers(2, 4))
    side = COUNT_SIDE
    # Evenly spread along a row, or a column, with a little jitter; gaps >= 3 pixels.
    starts = [2, 12, 23] if n == 3 else [4, 20]
    across = int(rng.integers(6, 20))
    vertical = bool(rng.integers(2))
    objs = []
    for s in starts:
        s = s + int(rng.integers(0, 2))
        r, c = (s, across) if vertical else (across, s)
        objs.append(WorldObject(colour, shape, side, r, c))
    return Scene(kind, tuple(objs), background, bg_seed)


def _clip(start: int, side: int) -> int:
    return int(min(max(start, 1), IMAGE_SIZE - 1 - side))


# ---- rendering -----------------------------------------------------------------------------
def shape_mask(shape: str, side: int) -> np.ndarray:
    """(side, side) bool mask of a shape filling its bounding box.

    circle: disc of diameter `side`; square: the full box; triangle: upward isosceles, apex at
    the top row's centre, base the bottom row.
    """
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64) + 0.5
    if shape == "square":
        return np.ones((side, side), bool)
    if shape == "circle":
        c = side / 2
        return (yy - c) ** 2 + (xx - c) ** 2 <= c * c
    if shape == "triangle":
        half_width = yy / side * side / 2  # widens linearly from the apex to the base
        return np.abs(xx - side / 2) <= half_width + 0.5
    raise ValueError(f"unknown shape {shape!r}")


def render_background(kind: str, seed: int) -> np.ndarray:
    """(S, S, 3) uint8 grey background (R = G = B everywhere)."""
    rng = np.random.default_rng(seed)
    base = int(rng.integers(60, 196))
    s = IMAGE_SIZE
    yy, xx = np.mgrid[0:s, 0:s]
    if kind == "plain":
        grey = np.full((s, s), base)
    elif kind == "stripes":
        period = int(rng.integers(3, 7))
        axis = xx if rng.integers(2) else yy
        grey = base + np.where((axis // period) % 2 == 0, 22, -22)
    elif kind == "checker":
        period = int(rng.integers(3, 7))
        grey = base + np.where(((xx // period) + (yy // period)) % 2 == 0, 20, -20)
    elif kind == "noise":
        grey = base + rng.integers(-18, 19, size=(s, s))
    else:
        raise ValueError(f"unknown background {kind!r}")
    grey = np.clip(grey, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def render(scene: Scene) -> np.ndarray:
    """(S, S, 3) uint8 RGB image of a scene (hard edges, exact palette colours)."""
    img = render_background(scene.background, scene.background_seed)
    for o in scene.objects:
        mask = shape_mask(o.shape, o.side)
        region = img[o.row : o.row + o.side, o.col : o.col + o.side]
        region[mask] = COLOURS[o.colour]
    return img


def sample_batch(seed: int, n: int, held_out: bool = False) -> tuple[np.ndarray, list[str], list[Scene]]:
    """n images (n, S, S, 3) uint8, their captions (random paraphrases) and scenes, from `seed`."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, held_out) for _ in range(n)]
    captions = [caption(s, int(rng.integers(6))) for s in scenes]
    return np.stack([render(s) for s in scenes]), captions, scenes


def eval_prompts(n: int, seed: int = 1234, held_out: bool = True) -> list[tuple[str, Scene]]:
    """n evaluation prompts with the scenes they describe (held-out pairs by default).

    The scene's object placement is only one valid layout; the analyser judges the prompt's
    assertions (colours, shapes, count, position/relation), not pixel positions.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scene = sample_scene(rng, held_out, kind=KINDS[i % len(KINDS)])
        out.append((caption(scene, 0), scene))
    return out


# ---- reading a caption back ----------------------------------------------------------------
def parse_caption(text: str) -> Scene | None:
    """The scene a caption of this world asserts (objects at a canonical layout), or None.

    Accepts every paraphrase `caption` produces, so prompts from a file can be judged by the
    analyser when they are in the world's language; anything else gets None (no adherence).
    """
    words = " ".join(text.lower().replace(",", " ").split())
    for pre in ("a picture of ", "an image of "):
        if words.startswith(pre):
            rest = words[len(pre):]
            words = rest if rest.startswith("a ") or rest.split()[0] in COUNT_WORDS.values() else "a " + rest
    toks = words.split()
    colours, shapes = set(COLOURS), set(SHAPES)
    # count: "<two|three> <colour> <shape>s"
    if len(toks) == 3 and toks[0] in COUNT_WORDS.values() and toks[1] in colours and toks[2].rstrip("s") in shapes:
        n = {v: k for k, v in COUNT_WORDS.items()}[toks[0]]
        objs = tuple(WorldObject(toks[1], toks[2][:-1], COUNT_SIDE, 12, 2 + 10 * i) for i in range(n))
        return Scene("count", objs, "plain", 0)
    if len(toks) >= 4 and toks[0] == "a":
        # single: "a <size> <colour> <shape> <position phrase>"
        if toks[1] in SIZES and toks[2] in colours and toks[3] in shapes:
            phrase = " ".join(toks[4:])
            for pos, phrases in _POSITION_PHRASES.items():
                if phrase in phrases:
                    side = SIZES[toks[1]]
                    r, c = POSITIONS[pos]
                    obj = WorldObject(toks[2], toks[3], side, _clip(r - side // 2, side), _clip(c - side // 2, side))
                    return Scene("single", (obj,), "plain", 0, size=toks[1], position=pos)
        # relation: "a <colour> <shape> <relation phrase> a <colour> <shape>"
        if toks[1] in colours and toks[2] in shapes and toks[-3] == "a" and toks[-2] in colours and toks[-1] in shapes:
            rel = " ".join(toks[3:-3])
            relation = {"left of": "left of", "to the left of": "left of", "above": "above", "on top of": "above"}.get(rel)
            if relation is not None and toks[1] != toks[-2]:
                a = WorldObject(toks[1], toks[2], 10, 11, 3)
                b = WorldObject(toks[-2], toks[-1], 10, 11, 19)
                if relation == "above":
                    a, b = WorldObject(a.colour, a.shape, 10, 3, 11), WorldObject(b.colour, b.shape, 10, 19, 11)
                return Scene("relation", (a, b), "plain", 0, relation=relation)
    return None
