"""Teacher-forced training forward of the project's InfinityTransformer over all scales at once.

One pass over the concatenated tokens of every scale with the block-causal mask (a token sees
its own and earlier scales), the same module code the exporter traces; bit logits (B, L, d, 2)
against the quantizer's bits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stagevar.runtime.rope import rope_cos_sin
from stagevar.runtime.schedules import ScaleSchedule

from ..infinity.transformer import InfinityTransformer, block_causal_bias, text_key_bias


class TeacherForcing:
    """Fixed tensors of one schedule (RoPE tables, mask), reused every step."""

    def __init__(self, model: InfinityTransformer, schedule: ScaleSchedule) -> None:
        self.model = model
        self.schedule = schedule
        cos, sin = rope_cos_sin(schedule, model.config.head_dim)
        self.cos, self.sin = torch.from_numpy(cos), torch.from_numpy(sin)
        self.mask = block_causal_bias(list(schedule.token_counts))

    def logits(self, text_BTC: torch.Tensor, text_mask_BT: torch.Tensor, drop_B: torch.Tensor,
               inputs: list[torch.Tensor]) -> torch.Tensor:
        """Bit logits (B, L, d, 2). Rows with drop_B true see the learned null text instead."""
        m = self.model
        bias = text_key_bias(text_mask_BT)
        null = m.null_text(text_BTC.shape[0], text_BTC.shape[1])
        text = torch.where(drop_B[:, None, None], null, text_BTC)
        cond = m.text_condition(text, bias)
        parts = [m.embed_scale(None, 0, cond)]
        parts += [m.embed_scale(tok, k + 1, cond) for k, tok in enumerate(inputs)]
        x = torch.cat(parts, dim=1)
        hidden, _, _ = m.forward_scale(x, cond, self.cos, self.sin, None, attn_bias=self.mask)
        out = m.head_logits(hidden, cond)
        return out.view(out.shape[0], out.shape[1], -1, 2)

    @staticmethod
    def loss(logits_BLd2: torch.Tensor, bits: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean bit cross-entropy, bit accuracy) against the concatenated labels of all scales."""
        labels = torch.cat(bits, dim=1)
        ce = F.cross_entropy(logits_BLd2.reshape(-1, 2), labels.reshape(-1))
        acc = (logits_BLd2.argmax(-1) == labels).float().mean()
        return ce, acc
