"""A small English+Chinese text encoder for the cartoon grammar, trained from nothing.

    python -m models.cartoon_encoder models/weights/gan-cartoon-64/encoder --steps 1200

Why not the shipped MiniLM: its WordPiece vocabulary maps most Chinese characters
to ``[UNK]`` (see :func:`unk_report`), so Chinese prompts reach the generator as
nearly one vector. No multilingual weights can be downloaded here, so this module
trains (1) a byte-level BPE tokenizer on the grammar's captions in both languages
(byte-level: any script tokenizes, nothing is ever ``[UNK]``) and (2) a 2-layer
``BertModel`` whose every token state must predict every attribute of its caption
(an extra "unspecified" class for attributes a caption leaves open), with English
and Chinese captions of one character pulled to the same mean state. The result
is saved with ``save_pretrained`` and loads through :class:`models.encoders.TextEncoder`
like any ``transformers`` folder; the GAN keeps it frozen, as it does MiniLM.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
from torch import nn

from models import cartoon
from models.cartoon import ATTRIBUTES, VALUES
from models.cartoon_text import FREE_FORM, LANGUAGES, caption, partial

PAD = "<pad>"


def sample_captions(rng: np.random.Generator, n: int, combos: list[dict],
                    p_partial: float = 0.25, p_free: float = 0.1) -> tuple[list[dict], list]:
    """``n`` attribute dicts (None = open) and their (English, Chinese) caption pairs."""
    attrs, pairs = [], []
    for _ in range(n):
        full = cartoon.random_attrs(rng, combos)
        u = rng.random()
        if u < p_free:
            a = dict.fromkeys(ATTRIBUTES)
            k = int(rng.integers(len(FREE_FORM["en"])))
            pair = (FREE_FORM["en"][k], FREE_FORM["zh"][k])
        else:
            a = partial(full, rng) if u < p_free + p_partial else full
            pair = (caption(a, "en"), caption(a, "zh"))
        attrs.append(a)
        pairs.append(pair)
    return attrs, pairs


def targets(attrs: list[dict]) -> torch.Tensor:
    """(N, n_attributes) class ids; an open attribute is class ``len(VALUES[a])``."""
    return torch.tensor([[VALUES[a].index(x[a]) if x[a] is not None else len(VALUES[a])
                          for a in ATTRIBUTES] for x in attrs])


def train_tokenizer(texts: list[str], vocab_size: int = 600):
    """A byte-level BPE tokenizer trained on ``texts``, as a PreTrainedTokenizerFast.

    A small vocabulary keeps its pieces near word size (a large one learns whole clauses).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, model_max_length=64,
                                   model_input_names=["input_ids", "attention_mask"])


class Pretrainer(nn.Module):
    """A BertModel plus one linear head per attribute, read from every token state."""

    def __init__(self, vocab_size: int, pad_id: int, hidden: int = 128, layers: int = 2):
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=4, intermediate_size=2 * hidden,
                            max_position_embeddings=64, type_vocab_size=1, pad_token_id=pad_id)
        self.bert = BertModel(config)  # its pooler goes unused, but loads without warnings
        self.heads = nn.ModuleList(nn.Linear(hidden, len(VALUES[a]) + 1) for a in ATTRIBUTES)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list]:
        """Token states (B, T, H) and per-attribute logits (B, T, k+1) of every token."""
        states = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        return states, [head(states) for head in self.heads]


def _loss(model: Pretrainer, batch, y: torch.Tensor, n_pairs: int) -> torch.Tensor:
    states, logits = model(batch["input_ids"], batch["attention_mask"])
    mask = batch["attention_mask"].float()
    weights = mask / mask.sum(1, keepdim=True)  # every token counts, each caption equally
    loss = sum((nn.functional.cross_entropy(lg.transpose(1, 2), y[:, i:i + 1].expand_as(mask),
                                            reduction="none") * weights).sum(1).mean()
               for i, lg in enumerate(logits))
    pooled = (states * weights[..., None]).sum(1)
    # rows i and n_pairs + i are one character in English and in Chinese
    align = 1 - nn.functional.cosine_similarity(pooled[:n_pairs], pooled[n_pairs:]).mean()
    return loss / len(ATTRIBUTES) + align


def pretrain(out_dir: str, steps: int = 3000, batch: int = 64, seed: int = 0,
             log_every: int = 250) -> dict:
    """Train tokenizer and encoder on the train split's captions; save both to ``out_dir``."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    combos = cartoon.split("train")
    _, corpus = sample_captions(rng, 20000, combos)
    tokenizer = train_tokenizer([t for pair in corpus for t in pair])
    model = Pretrainer(len(tokenizer), tokenizer.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps, pct_start=0.1)
    for step in range(1, steps + 1):
        attrs, pairs = sample_captions(rng, batch, combos)
        texts = [p[0] for p in pairs] + [p[1] for p in pairs]
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        loss = _loss(model, enc, torch.cat([targets(attrs)] * 2), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
    model.eval()
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    model.bert.save_pretrained(out_dir)
    report = {"steps": steps, "batch_pairs": batch, "seed": seed,
              "heldout_accuracy": heldout_accuracy(model, tokenizer)}
    with open(os.path.join(out_dir, "pretraining.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


@torch.no_grad()
def heldout_accuracy(model: Pretrainer, tokenizer, n: int = 1000) -> dict:
    """Per-language mean accuracy of the attribute heads (mean over tokens) on held-out captions."""
    rng = np.random.default_rng(123)
    attrs, pairs = sample_captions(rng, n, cartoon.split("heldout"), p_partial=0, p_free=0)
    y, out = targets(attrs), {}
    for li, lang in enumerate(LANGUAGES):
        enc = tokenizer([p[li] for p in pairs], padding=True, return_tensors="pt")
        _, logits = model(enc["input_ids"], enc["attention_mask"])
        w = enc["attention_mask"].float()[..., None]
        hits = [((lg.softmax(-1) * w).sum(1).argmax(-1) == y[:, i]).float().mean().item()
                for i, lg in enumerate(logits)]
        out[lang] = round(float(np.mean(hits)), 4)
    return out


def unk_report(encoder_path: str | None = None, n: int = 200) -> dict:
    """How many tokens of Chinese prompts a tokenizer maps to its unknown token."""
    from transformers import AutoTokenizer

    from models.encoders import default_encoder_path

    tok = AutoTokenizer.from_pretrained(encoder_path or default_encoder_path())
    _, pairs = sample_captions(np.random.default_rng(0), n, cartoon.split("heldout"), 0, 0)

    def count(text: str) -> tuple[int, int]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return sum(i == tok.unk_token_id for i in ids), len(ids)

    unk, total = map(sum, zip(*(count(p[1]) for p in pairs), strict=True))
    founding = count("卡通风格的人物")
    return {"tokenizer": encoder_path or "MiniLM (shipped)",
            "founding_prompt": {"unk": founding[0], "tokens": founding[1],
                                "pieces": tok.tokenize("卡通风格的人物")},
            "chinese_captions": {"unk": int(unk), "tokens": int(total), "n_captions": n}}


def similarity_report(encoder_path: str, n: int = 500) -> dict:
    """Cosine of mean-pooled codes: EN vs ZH of one character, and of different characters."""
    from models.encoders import TextEncoder

    enc = TextEncoder(encoder_path)
    _, pairs = sample_captions(np.random.default_rng(1), n, cartoon.split("heldout"), 0, 0)
    en = enc.encode([p[0] for p in pairs]).pooled
    zh = enc.encode([p[1] for p in pairs]).pooled
    cos = nn.functional.cosine_similarity
    return {"same_character_en_zh": round(cos(en, zh).mean().item(), 4),
            "different_character_en_zh": round(cos(en, zh.roll(1, 0)).mean().item(), 4),
            "different_character_en_en": round(cos(en, en.roll(1, 0)).mean().item(), 4),
            "n": n}


def main(argv: list[str] | None = None) -> None:
    """Command line: pretrain into a folder, then print its measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true", help="measure an existing folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.report_only:
        print(json.dumps(pretrain(args.out_dir, args.steps, seed=args.seed)))
    print(json.dumps(unk_report(), ensure_ascii=False))
    print(json.dumps(unk_report(args.out_dir), ensure_ascii=False))
    print(json.dumps(similarity_report(args.out_dir)))


if __name__ == "__main__":
    main()
