"""Diffusers text-to-image pipelines (SD 1.x/2.x, SDXL, SD3, FLUX) as an :class:`ImageModel`.

Prompts are encoded through the pipeline's own ``encode_prompt`` and images drawn by calling
the pipeline with ``prompt_embeds=`` (and pooled embeddings where the family has them), so
embeddings can be cached per unique prompt and batches rebuilt with ``select``/``concat``.

On CPU every prompt is encoded and every image drawn on its own (``batch_invariant``): CPU
kernels round differently for different batch sizes, and a one-bit change in a latent can
move a pixel by one level, which would break "image i depends only on its seed".
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from models.base import GenerationParams, ImageModel, PromptEmbeds

# Options consumed by encode_prompt; every other option goes to from_pretrained.
ENCODE_OPTIONS = ("clip_skip", "max_sequence_length")
_DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32"}


@dataclass(frozen=True)
class _Layout:
    """How one pipeline family encodes prompts and what sizes it accepts."""

    name: str
    pooled_index: int | None  # where encode_prompt returns the pooled states
    encode_kwargs: dict[str, Any]  # arguments encode_prompt needs besides the prompt
    tokenizers: tuple[str, ...]  # tokenizers whose truncation loses per-token states
    t5_tokenizer: str | None = None  # limited by max_sequence_length, not model_max_length
    multiple_of: int = 1  # a size rule of check_inputs besides the latent grid
    pack: int = 1  # latents packed into pack x pack patches (FLUX)
    true_cfg: bool = False  # negatives only count when params.extra["true_cfg_scale"] > 1


_NO_CFG = {"do_classifier_free_guidance": False}
# Keyed by class name, matched against the pipeline's MRO so subclasses work too.
_LAYOUTS = {
    "FluxPipeline": _Layout("flux", 1, {"prompt_2": None}, ("tokenizer_2",), "tokenizer_2",
                            pack=2, true_cfg=True),
    "StableDiffusion3Pipeline": _Layout(
        "sd3", 2, {"prompt_2": None, "prompt_3": None, **_NO_CFG},
        ("tokenizer", "tokenizer_2", "tokenizer_3"), "tokenizer_3"),
    "StableDiffusionXLPipeline": _Layout("sdxl", 2, _NO_CFG, ("tokenizer", "tokenizer_2"),
                                         multiple_of=8),
    "StableDiffusionPipeline": _Layout("sd", None, _NO_CFG, ("tokenizer",), multiple_of=8),
}


def _layout_of(pipe) -> _Layout:
    for cls in type(pipe).__mro__:
        if cls.__name__ in _LAYOUTS:
            return _LAYOUTS[cls.__name__]
    raise ValueError(
        f"{type(pipe).__name__} is not supported; model.family 'diffusers' takes pipelines "
        f"derived from {', '.join(_LAYOUTS)}"
    )


@dataclass
class DiffusersEmbeds(PromptEmbeds):
    """Pipeline conditioning for a batch: per-token states (B, T, D) of prompts and negative
    prompts, and pooled states (B, P) for SDXL, SD3 and FLUX (None for SD 1.x/2.x)."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    truncated: list[bool] = field(default_factory=list)

    def _tensors(self) -> dict[str, torch.Tensor | None]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "truncated"}

    def select(self, indices: list[int]) -> DiffusersEmbeds:
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.prompt_embeds.device)
        picked = {k: None if t is None else t[idx] for k, t in self._tensors().items()}
        return DiffusersEmbeds(**picked, truncated=[self.truncated[i] for i in indices])

    @staticmethod
    def concat(parts: list[DiffusersEmbeds]) -> DiffusersEmbeds:
        """Join batches encoded by the same model (their token lengths are fixed)."""
        joined = {
            k: None if t is None else torch.cat([p._tensors()[k].to(t.device) for p in parts])
            for k, t in parts[0]._tensors().items()
        }
        return DiffusersEmbeds(**joined, truncated=[t for p in parts for t in p.truncated])

    def call_kwargs(self, device: torch.device, negatives: bool = True) -> dict[str, Any]:
        """The tensors under the names the pipeline's ``__call__`` takes them by."""
        kwargs = {k: t.to(device) for k, t in self._tensors().items() if t is not None}
        if not negatives:
            kwargs = {k: t for k, t in kwargs.items() if not k.startswith("negative_")}
        return kwargs


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, _DTYPE_ALIASES.get(dtype, dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    return resolved


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    import diffusers.utils

    # diffusers renamed torch_dtype to dtype (torch_dtype goes in 1.0); older ones lack dtype.
    return {"dtype" if hasattr(diffusers.utils, "_resolve_dtype") else "torch_dtype": dtype}


def _load_pipeline(path: str, **kwargs):
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline

    if kwargs.get("trust_remote_code") or "custom_pipeline" in kwargs:
        return DiffusionPipeline.from_pretrained(path, **kwargs)
    try:
        # Maps e.g. a saved img2img pipeline onto its text-to-image sibling.
        return AutoPipelineForText2Image.from_pretrained(path, **kwargs)
    except ValueError as auto_error:
        if "AutoPipeline can't find" not in str(auto_error):
            raise
        return DiffusionPipeline.from_pretrained(path, **kwargs)


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) floats in [0, 1] to uint8, rounding as diffusers' numpy_to_pil does."""
    return (images * 255).round().clip(0, 255).astype(np.uint8)


class DiffusersImageModel(ImageModel):
    """A loaded diffusers text-to-image pipeline behind the :class:`ImageModel` interface.

    ``batch_invariant`` (default: True on CPU) encodes and draws one sample at a time so
    results never depend on batch composition; on CUDA it defaults to False for speed, and
    images then depend on their batch only through float rounding.
    """

    native_size = None

    def __init__(self, pipe, model_id: str, device: str | torch.device = "cpu",
                 batch_invariant: bool | None = None, encode_options: dict | None = None):
        self.pipe = pipe
        self.model_id = model_id
        self.device = torch.device(device)
        self.layout = _layout_of(pipe)
        self.batch_invariant = (self.device.type == "cpu" if batch_invariant is None
                                else bool(batch_invariant))
        self.encode_options = dict(encode_options or {})
        self._check_clip_skip()
        pipe.set_progress_bar_config(disable=True)

    def _check_clip_skip(self) -> None:
        encoder = getattr(self.pipe, "text_encoder", None)
        # SD's clip_skip path reads text_encoder.text_model, which transformers >= 5.6 removed
        # from CLIPTextModel (huggingface/diffusers#14124): fail at load, not mid-job.
        if (self.encode_options.get("clip_skip") and self.layout.name == "sd"
                and encoder is not None and not hasattr(encoder, "text_model")):
            raise ValueError("model.options.clip_skip needs a diffusers release that supports "
                             "transformers >= 5.6 for SD 1.x/2.x (huggingface/diffusers#14124)")

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cpu",
                        dtype: torch.dtype | str = torch.float32, scheduler: str | None = None,
                        trust_remote_code: bool = False,
                        options: dict | None = None) -> DiffusersImageModel:
        """Load a pipeline folder or hub id onto ``device``.

        ``options``: ``clip_skip`` and ``max_sequence_length`` go to ``encode_prompt``;
        ``batch_invariant`` overrides the default above; ``scheduler_config`` (a dict)
        overrides fields of the scheduler named by ``scheduler``; ``safety_checker: false``
        skips the checker; anything else (``variant``, ``revision``...) goes to
        ``from_pretrained``.
        """
        options = dict(options or {})
        encode_options = {k: options.pop(k) for k in ENCODE_OPTIONS if k in options}
        batch_invariant = options.pop("batch_invariant", None)
        fast = {k: options.pop(k) for k in ("channels_last", "compile") if k in options}
        scheduler_config = options.pop("scheduler_config", None) or {}
        if options.pop("safety_checker", True) is False:
            options.update(safety_checker=None, requires_safety_checker=False)
        pipe = _load_pipeline(path, trust_remote_code=trust_remote_code,
                              **_dtype_kwarg(_as_dtype(dtype)), **options)
        model = cls(pipe.to(device), path, device, batch_invariant, encode_options)
        if scheduler or scheduler_config:
            model.set_scheduler(scheduler or type(pipe.scheduler).__name__, **scheduler_config)
        model.apply_fast_paths(**fast)
        return model

    def apply_fast_paths(self, channels_last: bool | None = None, compile: bool = False) -> None:
        """CUDA speed-ups: channels_last for the conv-heavy denoiser and VAE (on by default
        on CUDA), and optional ``torch.compile`` of the denoiser (warmed up by ``warmup``).
        Attention already runs through PyTorch SDPA (diffusers' default processors)."""
        denoiser = getattr(self.pipe, "unet", None) or getattr(self.pipe, "transformer", None)
        if channels_last if channels_last is not None else self.device.type == "cuda":
            for module in (getattr(self.pipe, "unet", None), getattr(self.pipe, "vae", None)):
                if module is not None:
                    module.to(memory_format=torch.channels_last)
        if compile and denoiser is not None:
            compiled = torch.compile(denoiser, mode="max-autotune-no-cudagraphs", fullgraph=False)
            setattr(self.pipe, "unet" if hasattr(self.pipe, "unet") else "transformer", compiled)
        self.compiled = bool(compile)

    def warmup(self, params: GenerationParams) -> None:
        """Compile (or just touch) every kernel for this bucket before anything is timed."""
        if not (self.compiled or self.device.type == "cuda"):
            return
        embeds = self.encode_prompt(["warm-up"])
        self.generate(embeds, [0], params)

    def set_scheduler(self, name: str, **overrides: Any) -> None:
        """Swap in a diffusers scheduler by class name, built from the current config."""
        import diffusers

        scheduler_class = getattr(diffusers, name, None)
        if not (isinstance(scheduler_class, type) and name.endswith("Scheduler")):
            compatible = sorted(c.__name__ for c in self.pipe.scheduler.compatibles)
            raise ValueError(f"unknown scheduler {name!r}; this pipeline takes one of "
                             f"{', '.join(compatible)}")
        self.pipe.scheduler = scheduler_class.from_config(self.pipe.scheduler.config, **overrides)

    # -- encoding ---------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str],
                      negative_prompts: list[str | None] | None = None) -> DiffusersEmbeds:
        """Encode prompts and per-sample negative prompts (None: no negative prompt)."""
        negatives = [None] * len(prompts) if negative_prompts is None else list(negative_prompts)
        if not prompts or len(negatives) != len(prompts):
            raise ValueError(f"got {len(negatives)} negative prompts for {len(prompts)} prompts")
        neg_texts = ["" if n is None else n for n in negatives]
        texts = list(dict.fromkeys([*prompts, *neg_texts]))  # each unique text once
        tokens, pooled = self._encode_texts(texts)
        row = {text: i for i, text in enumerate(texts)}
        pos = torch.as_tensor([row[p] for p in prompts], device=tokens.device)
        neg = torch.as_tensor([row[n] for n in neg_texts], device=tokens.device)
        embeds = DiffusersEmbeds(
            tokens[pos], tokens[neg], None if pooled is None else pooled[pos],
            None if pooled is None else pooled[neg], self._truncated(prompts),
        )
        if getattr(self.pipe.config, "force_zeros_for_empty_prompt", False):
            self._zero_missing_negatives(embeds, [n is None for n in negatives])
        return embeds

    @staticmethod
    def _zero_missing_negatives(embeds: DiffusersEmbeds, missing: list[bool]) -> None:
        # SDXL's own convention for "no negative prompt": zeros, not the encoded "".
        rows = torch.as_tensor(missing, device=embeds.negative_prompt_embeds.device)
        embeds.negative_prompt_embeds[rows] = 0
        if embeds.negative_pooled_prompt_embeds is not None:
            embeds.negative_pooled_prompt_embeds[rows] = 0

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token (U, T, D) and pooled (U, P) states of ``texts``, in order."""
        chunks = [[t] for t in texts] if self.batch_invariant else [texts]
        outputs = [self._encode_chunk(chunk) for chunk in chunks]
        tokens = torch.cat([o[0] for o in outputs])
        pooled = None if outputs[0][1] is None else torch.cat([o[1] for o in outputs])
        return tokens, pooled

    def _encode_chunk(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.pipe.encode_prompt(
            prompt=texts, device=self.device, num_images_per_prompt=1,
            **self.layout.encode_kwargs, **self.encode_options,
        )
        index = self.layout.pooled_index
        return out[0], None if index is None else out[index]

    def _truncated(self, prompts: list[str]) -> list[bool]:
        """Whether any per-token tokenizer would cut each prompt."""
        flags = [False] * len(prompts)
        for name in self.layout.tokenizers:
            tokenizer = getattr(self.pipe, name, None)
            if tokenizer is None:
                continue
            limit = self._token_limit(name, tokenizer)
            lengths = [len(ids) for ids in tokenizer(prompts, verbose=False)["input_ids"]]
            flags = [f or n > limit for f, n in zip(flags, lengths, strict=True)]
        return flags

    def _token_limit(self, name: str, tokenizer) -> int:
        if name != self.layout.t5_tokenizer:
            return int(tokenizer.model_max_length)
        default = inspect.signature(self.pipe.encode_prompt).parameters["max_sequence_length"]
        return int(self.encode_options.get("max_sequence_length", default.default))

    # -- generation -------------------------------------------------------------------------

    def size_multiple(self) -> int:
        """Width and height must be multiples of this."""
        latent_grid = (getattr(self.pipe, "vae_scale_factor", 8)
                       * getattr(self.pipe, "patch_size", 1) * self.layout.pack)
        return math.lcm(latent_grid, self.layout.multiple_of)

    def check_params(self, params: GenerationParams) -> None:
        """Reject sizes the VAE (and, for SD3/FLUX, the transformer's patches) cannot draw."""
        super().check_params(params)
        multiple = self.size_multiple()
        for name, value in (("width", params.width), ("height", params.height)):
            if value <= 0 or value % multiple:
                fixed = max(multiple, value - value % multiple)
                raise ValueError(f"generation.{name}={value}: {self.model_id} draws sizes that "
                                 f"are multiples of {multiple}; try {fixed}")

    def generate(self, embeds: DiffusersEmbeds, seeds: list[int],
                 params: GenerationParams) -> np.ndarray:
        """Draw one image per row of ``embeds`` with its own seed; (B, H, W, 3) uint8."""
        self.check_params(params)
        if len(seeds) != len(embeds):
            raise ValueError(f"got {len(seeds)} seeds for {len(embeds)} prompts")
        if not seeds:
            return np.zeros((0, params.height, params.width, 3), dtype=np.uint8)
        if not self.batch_invariant:
            return self._draw(embeds, seeds, params)
        return np.concatenate([self._draw(embeds.select([i]), [seed], params)
                               for i, seed in enumerate(seeds)])

    def _draw(self, embeds: DiffusersEmbeds, seeds: list[int],
              params: GenerationParams) -> np.ndarray:
        negatives = not self.layout.true_cfg or params.extra.get("true_cfg_scale", 1.0) > 1
        kwargs: dict[str, Any] = dict(params.extra)
        if params.steps is not None:
            kwargs["num_inference_steps"] = params.steps
        if params.guidance_scale is not None:
            kwargs["guidance_scale"] = params.guidance_scale
        out = self.pipe(
            **embeds.call_kwargs(self.device, negatives), width=params.width,
            height=params.height, generator=self._generators(seeds), output_type="np", **kwargs,
        )
        return _to_uint8(np.asarray(out.images))

    def _generators(self, seeds: list[int]) -> list[torch.Generator]:
        # One generator per image: its noise never depends on its neighbours.
        device = "cpu" if self.device.type == "cpu" else self.device
        return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
