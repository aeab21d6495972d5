"""Training and fine-tuning of synthset's own model families (GAN and autoregressive).

``synthset train CONFIG.yaml`` calls :func:`load_train_config` then
:func:`run_training`. A run directory holds ``losses.jsonl``, ``samples/*.png``,
a resumable ``checkpoint/`` and, at the end, an exported model folder.
"""

from __future__ import annotations

import copy

DEFAULTS: dict = {
    "family": "gan",
    "data": {"path": None, "image_column": "image", "caption_column": "caption",
             "storage_options": {}},
    "model": {},  # GanConfig fields for a run from scratch (ignored with init_from)
    "init_from": None,  # an exported model folder to fine-tune
    "steps": 10000,
    "batch_size": 32,
    "lr": 2e-4,
    "lr_g": None,
    "lr_d": None,
    "betas": [0.0, 0.99],
    "ema_decay": 0.999,
    "mismatch_weight": 0.5,
    "hard_negatives": 0.5,  # share of mismatched captions that differ in only 1-2 words
    "mode_seeking": 0.0,  # gan: weight of the MSGAN diversity term (0: off)
    "image_size": 64,
    "out_dir": "runs/gan",
    "export_dir": None,  # default: OUT_DIR/export
    "sample_every": 500,
    "checkpoint_every": 500,
    "log_every": 50,
    "max_minutes": None,  # stop (checkpoint + export) after this much wall-clock time
    "resume": True,  # continue from OUT_DIR/checkpoint if it exists
    "seed": 0,
    "device": "auto",  # cpu, cuda, cuda:N or auto
    "bf16": False,  # bf16 autocast, CUDA only
    "threads": None,  # torch CPU threads
    # autoregressive only: the VQ-VAE stage, then a warm-up + cosine transformer schedule
    "vq_steps": 3000,  # tokenizer steps before the transformer's `steps` (0: keep init_from's)
    "vq_lr": 2e-3,
    "vq_batch_size": 32,
    "warmup": 200,
}
FAMILIES = ("gan", "autoregressive")


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_override(config: dict, override: str) -> None:
    """Apply one ``dotted.key=value`` override in place; the value is parsed as YAML."""
    import yaml

    key, sep, raw = override.partition("=")
    if not sep:
        raise ValueError(f"override {override!r} should look like key=value (e.g. steps=100)")
    *parents, leaf = key.strip().split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(raw)


def validate(config: dict) -> dict:
    """Raise ValueError naming the bad field; returns ``config``."""
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown training option(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    if config["family"] not in FAMILIES:
        raise ValueError(f"family: one of {list(FAMILIES)} can be trained here, "
                         f"got {config['family']!r}")
    if not config["data"].get("path"):
        raise ValueError("data.path: set the image-caption Parquet dataset to train on")
    for key in ("steps", "batch_size", "image_size"):
        if not isinstance(config[key], int) or config[key] <= 0:
            raise ValueError(f"{key}: expected a positive integer, got {config[key]!r}")
    return config


def load_train_config(path: str | None, overrides: list[str] | None = None) -> dict:
    """Defaults, then the YAML file at ``path`` (if any), then ``key=value`` overrides."""
    import yaml

    config = copy.deepcopy(DEFAULTS)
    if path:
        with open(path) as f:
            config = _merge(config, yaml.safe_load(f) or {})
    for override in overrides or []:
        apply_override(config, override)
    return validate(config)


def run_training(config: dict) -> str:
    """Train (or fine-tune, or resume) as ``config`` says; returns the export folder."""
    config = validate(_merge(DEFAULTS, config))
    if config["family"] == "autoregressive":
        from models.train.ar_runner import train_autoregressive

        return train_autoregressive(config)
    from models.train.runner import train_gan

    return train_gan(config)
