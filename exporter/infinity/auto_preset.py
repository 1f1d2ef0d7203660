"""`--model auto` and `--config FILE.json`: a preset built from the checkpoints themselves.

The transformer and VAE architectures come from their keys (architecture.py), the text
encoder's from its folder's config.json. A JSON config file overrides or completes any of it:

  {"name": "my-finetune",
   "transformer": {"norm_eps": 1e-6, ...},      InfinityConfig fields
   "vae": {"norm_groups": 32, ...},             VAEDecoderConfig fields
   "text_encoder": {"max_length": 512, ...},    TextEncoderConfig fields
   "default_cfg": 3.0, "default_tau": 0.5}
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path

from stagevar.runtime.errors import StagevarError

from ..checkpoint_io import read_state_dict
from .architecture import infer_transformer_fields, infer_vae_fields, shapes_of, split_bits
from .config import InfinityConfig
from .presets import InfinityPreset
from .text_encoder import TextEncoderConfig
from .vae_decoder import VAEDecoderConfig

CONFIG_SECTIONS = {"transformer": InfinityConfig, "vae": VAEDecoderConfig, "text_encoder": TextEncoderConfig}
CONFIG_SCALARS = ("name", "default_cfg", "default_tau")
DEFAULT_CFG, DEFAULT_TAU = 3.0, 0.5  # the official Infinity-2B demo values


def read_config_file(path: str | Path | None) -> dict:
    """The --config JSON, its sections and field names checked (values are checked on use)."""
    if path is None:
        return {}
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StagevarError(f"--config {p} does not exist; pass a JSON file.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StagevarError(f"--config {p} is not valid JSON ({str(exc).splitlines()[0]}); fix the file.") from None
    if not isinstance(data, dict):
        raise StagevarError(f"--config {p} must hold a JSON object with sections {', '.join(CONFIG_SECTIONS)}.")
    for key, value in data.items():
        if key in CONFIG_SCALARS:
            continue
        if key not in CONFIG_SECTIONS:
            raise StagevarError(f"--config {p} has an unknown entry {key!r}; use "
                                f"{', '.join(list(CONFIG_SECTIONS) + list(CONFIG_SCALARS))}.")
        known = {f.name for f in fields(CONFIG_SECTIONS[key])}
        if not isinstance(value, dict) or not set(value) <= known:
            bad = sorted(set(value) - known) if isinstance(value, dict) else value
            raise StagevarError(f"--config {p}: section {key!r} has unknown fields {bad}; known fields are "
                                f"{', '.join(sorted(known))}.")
    return data


def _build(cls, values: dict, what: str):
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise StagevarError(f"The inferred {what} architecture is not valid ({exc}); fix it with --config.") from None


def text_encoder_config(folder: str | Path) -> TextEncoderConfig:
    """The T5 encoder's shape from its folder's config.json (no weights are read)."""
    cfg_path = Path(folder) / "config.json"
    try:
        from transformers import T5Config

        return TextEncoderConfig.from_hf(T5Config.from_pretrained(str(folder)))
    except (OSError, ValueError) as exc:
        raise StagevarError(f"Text encoder folder {folder} has no readable T5 config.json ({cfg_path}); pass a local "
                            f"T5 folder.") from exc


def infer_preset(weights, vae, text_encoder, config_file=None, say=None) -> InfinityPreset:
    """The preset of the given checkpoints (plus --config); prints what it found."""
    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    overrides = read_config_file(config_file)
    t_fields = infer_transformer_fields(shapes_of(read_state_dict(weights)))
    v_fields = infer_vae_fields(shapes_of(read_state_dict(vae, wrapper_key=("vae",))))
    bits = t_fields.pop("bits_per_token")
    ffn = round(t_fields["mlp_ratio"] * t_fields["embed_dim"])
    code_dim, patchify = split_bits(bits, v_fields["code_dim"])
    transformer = _build(InfinityConfig, {**t_fields, "code_dim": code_dim, "patchify": patchify,
                                          **overrides.get("transformer", {})}, "transformer")
    if transformer.ffn_hidden != ffn and "mlp_ratio" not in overrides.get("transformer", {}):
        raise StagevarError(f"The checkpoint's FFN width {ffn} is not a multiple of 256 of the form "
                            f"round(C x ratio / 256) x 256 for C={transformer.embed_dim}; this exporter cannot build it.")
    vae_cfg = _build(VAEDecoderConfig, {**v_fields, **overrides.get("vae", {})}, "VAE")
    text = text_encoder_config(text_encoder)
    if overrides.get("text_encoder"):
        text = _build(TextEncoderConfig, {**asdict(text), **overrides["text_encoder"]}, "text encoder")
    if text.d_model != transformer.text_channels:
        raise StagevarError(f"The text encoder has {text.d_model} channels but the transformer expects "
                            f"{transformer.text_channels} (cfg_uncond); pass the T5 folder this model was trained with.")
    name = str(overrides.get("name") or f"infinity-d{transformer.depth}-c{transformer.embed_dim}")
    preset = InfinityPreset(name=name, transformer=transformer, vae=vae_cfg, text=text,
                            default_cfg=float(overrides.get("default_cfg", DEFAULT_CFG)),
                            default_tau=float(overrides.get("default_tau", DEFAULT_TAU)),
                            source="checkpoint+config" if overrides else "checkpoint")
    say(describe(preset))
    return preset


def describe(preset: InfinityPreset) -> str:
    """One line with the inferred architecture (printed by the export, recorded in the manifest)."""
    t, v = preset.transformer, preset.vae
    return (f"architecture from the checkpoint ({preset.name}): depth {t.depth} in {t.block_chunks} chunks, width "
            f"{t.embed_dim}, {t.num_heads} heads, FFN {t.ffn_hidden}, text {t.text_channels} channels x "
            f"{t.text_maxlen} null tokens, {t.bits_per_token} bits per token"
            f"{' (2x2 patchify)' if t.patchify else ''}; VAE {v.code_dim} codes, widths "
            f"{[v.base_channels * m for m in v.channel_mult]}, {v.num_res_blocks} res blocks, x{v.upsample_factor}; "
            f"T5 {preset.text.d_model} wide, {preset.text.num_layers} layers")


def check_preset_fits(preset: InfinityPreset, weights, vae) -> None:
    """A named preset given checkpoints of another architecture: one sentence naming the difference."""
    try:
        found = infer_transformer_fields(shapes_of(read_state_dict(weights)))
        found_vae = infer_vae_fields(shapes_of(read_state_dict(vae, wrapper_key=("vae",))))
    except StagevarError:
        return  # not readable as Infinity keys: the strict load names the keys instead
    t = preset.transformer
    expected = {"depth": t.depth, "embed_dim": t.embed_dim, "num_heads": t.num_heads, "block_chunks": t.block_chunks,
                "text_channels": t.text_channels, "bits_per_token": t.bits_per_token}
    diffs = [f"{k} {found[k]} (preset {v})" for k, v in expected.items() if found.get(k) != v]
    vdiffs = [f"VAE {k} {found_vae[k]} (preset {getattr(preset.vae, k)})"
              for k in ("code_dim", "base_channels", "channel_mult") if found_vae[k] != getattr(preset.vae, k)]
    if diffs or vdiffs:
        raise StagevarError(f"The checkpoints are not {preset.name}: they have {', '.join(diffs + vdiffs)}; drop "
                            f"--model (or pass --model auto) to export their own architecture.")


def with_overrides(preset: InfinityPreset, config_file) -> InfinityPreset:
    """A named preset with --config applied (same rules as for auto)."""
    overrides = read_config_file(config_file)
    if not overrides:
        return preset
    return replace(
        preset, name=str(overrides.get("name", preset.name)),
        transformer=_build(InfinityConfig, {**asdict(preset.transformer), **overrides.get("transformer", {})}, "transformer"),
        vae=_build(VAEDecoderConfig, {**asdict(preset.vae), **overrides.get("vae", {})}, "VAE"),
        text=_build(TextEncoderConfig, {**asdict(preset.text), **overrides.get("text_encoder", {})}, "text encoder"),
        default_cfg=float(overrides.get("default_cfg", preset.default_cfg)),
        default_tau=float(overrides.get("default_tau", preset.default_tau)),
        source=f"{preset.source}+config",
    )
