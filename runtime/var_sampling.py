"""VAR sampling with injected uniforms (reference var.md §4.2-§4.3 and §6).

CFG ramp: t = cfg * si / (S - 1) over ALL scales of the schedule (a plan that skips or changes
scales keeps the original si), logits = (1 + t) cond - t uncond; scale 0 is pure cond.
Filters on the combined logits: top-k keeps every logit >= the k-th largest value (ties at the
threshold all kept); top-p removes, on the ascending sort, the tokens whose float32 cumulative
softmax is <= float32(1 - top_p) (the largest token is never removed). The draw is the inverse
CDF of the renormalised probabilities: id = first index whose cumulative probability exceeds
u * total, for an injected uniform u in [0, 1) (torch.multinomial in the official code).
"""

from __future__ import annotations

import numpy as np

from .errors import StagevarError


def cfg_ramp(cfg: float, si: int, num_scales: int) -> float:
    """The guidance t of scale si (0 at scale 0, cfg at the last)."""
    return float(cfg) * si / (num_scales - 1)


def guidance_pair(cfg: float, si: int, num_scales: int) -> tuple[float, float]:
    """(1 + t, -t): the weights of the cond and null logits on a CFG scale."""
    t = cfg_ramp(cfg, si, num_scales)
    return 1.0 + t, -t


def check_filters(top_k: int, top_p: float, vocab: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 0 <= top_k <= vocab:
        raise StagevarError(f"top_k must be an integer between 0 (off) and the vocabulary size {vocab}, not {top_k!r}.")
    if not (isinstance(top_p, (int, float, np.floating)) and 0.0 <= float(top_p) <= 1.0):
        raise StagevarError(f"top_p must be a number between 0 (off) and 1, not {top_p!r}.")


def filter_logits(logits: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """float32 logits (..., V) with the removed tokens at -inf (top-k, then top-p)."""
    out = np.array(logits, dtype=np.float32, copy=True)
    V = out.shape[-1]
    flat = out.reshape(-1, V)
    candidates = None  # (rows, k) indices holding every finite logit, ascending index order
    if 0 < top_k < V:
        part = np.argpartition(flat, V - top_k, axis=-1)
        kth = np.take_along_axis(flat, part[:, V - top_k:V - top_k + 1], axis=-1)  # k-th largest value
        flat[flat < kth] = -np.inf
        if (np.isfinite(flat).sum(-1) == top_k).all():  # no extra ties at the threshold
            candidates = np.sort(part[:, V - top_k:], axis=-1)
    if top_p > 0:
        if candidates is None:
            candidates = np.broadcast_to(np.arange(V), flat.shape)
        # Top-p over the survivors only: -inf logits add 0 to every cumulative sum. Candidates in
        # index order + a stable sort = the full ascending stable sort restricted to them.
        vals = np.take_along_axis(flat, candidates, axis=-1)
        order = np.argsort(vals, axis=-1, kind="stable")
        srt = np.take_along_axis(vals, order, axis=-1)
        remove = np.cumsum(_softmax(srt), axis=-1, dtype=np.float32) <= np.float32(1.0 - top_p)
        remove[:, -1] = False
        rows, cols = np.nonzero(remove)
        flat[rows, np.take_along_axis(candidates, order, axis=-1)[rows, cols]] = -np.inf
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - m)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def inverse_cdf(probs: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """int64 ids (...,) from probabilities (..., V) and uniforms (...,) in [0, 1)."""
    cdf = np.cumsum(np.asarray(probs, np.float64), axis=-1)
    target = np.asarray(uniforms, np.float64) * cdf[..., -1]
    # searchsorted(side="right") per token: the number of cumulative values <= the target.
    ids = np.sum(cdf <= target[..., None], axis=-1, dtype=np.int64)
    # Float rounding can put u * total at the very end: take the last token with probability > 0.
    positive = np.asarray(probs) > 0
    last = probs.shape[-1] - 1 - np.argmax(positive[..., ::-1], axis=-1)
    return np.minimum(ids, last)


def sample_ids(logits: np.ndarray, uniforms: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """Token ids (N, l) from CFG-combined logits (N, l, V) and uniforms (N, l)."""
    uniforms = np.asarray(uniforms)
    if uniforms.shape != logits.shape[:-1]:
        raise ValueError(f"uniforms shape {uniforms.shape} does not match tokens shape {logits.shape[:-1]}")
    return inverse_cdf(_softmax(filter_logits(logits, top_k, top_p)), uniforms)


def draw_uniforms(seeds, patch_nums) -> list[np.ndarray]:
    """Per scale, uniforms (N, pn^2) float64: image i from its own generator (seed i), every
    scale drawn in order whatever the plan, so a batch equals its single-image calls."""
    per_image = []
    for seed in seeds:
        rng = np.random.default_rng(int(seed))
        per_image.append([rng.random(p * p) for p in patch_nums])
    return [np.stack([img[si] for img in per_image]) for si in range(len(patch_nums))]


def draw_lowrank_noise(seeds, plan, patch_nums) -> dict:
    """Per LOWRANK scale k: (gumbel [(N, M)] per chunk, projections [(N, M, r_c)] per chunk).

    Each image has its own generator, seeded (seed, 1) so the sampling uniforms (seed) are the
    same whatever the plan; scales and chunks in order; Gumbel = -log(-log(u)) with float64 u
    clipped away from 0 and 1; Q ~ N(0, 1/r_c) in float32 (DESIGN.md §3)."""
    from .stage_plan import Mode

    rngs = [np.random.default_rng([int(s), 1]) for s in seeds]
    noise = {}
    for k, (mode, ranks) in enumerate(zip(plan.modes, plan.ranks)):
        if mode is not Mode.LOWRANK:
            continue
        m = patch_nums[k] ** 2
        gumbel, projections = [], []
        for r in ranks:
            g, q = [], []
            for rng in rngs:
                u = np.clip(rng.random(m), 1e-20, 1.0 - 1e-16)
                g.append((-np.log(-np.log(u))).astype(np.float32))
                q.append(rng.standard_normal((m, int(r)), dtype=np.float32) * np.float32(1.0 / np.sqrt(r)))
            gumbel.append(np.stack(g))
            projections.append(np.stack(q))
        noise[k] = (gumbel, projections)
    return noise
