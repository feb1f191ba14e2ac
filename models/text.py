"""Text conditioning: the umT5 encoder (through transformers), event + action texts, and the action cache.

Yume-1.5 encodes the event description and the action description separately and concatenates the two
embeddings (REFERENCE.md section 5). Wan's convention is kept: each text's embedding is trimmed to its real
token count (EOS included) and the concatenation is zero-padded to the 512-token budget. The action part
is kept whole; the event part is truncated to what the budget leaves.

Action descriptions come from a finite vocabulary (81 key x mouse sentences, ``yume.tasks.action_text``),
so ``ActionEmbeddingCache`` encodes them once and stores them in a safetensors file whose name and
metadata carry the encoder id and the vocabulary hash: generation never re-encodes action text per chunk
(the public code does, every chunk).

Real weights come from a local directory (``TextEncoder.from_pretrained``); tests and the tiny profile use
``TextEncoder.tiny_random``: a random-init umT5 of the same architecture with a small byte-level BPE
tokenizer trained locally (no model hub needed).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import torch

from .config import TextConfig, TinyUMT5Config

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _sha(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:16]


def build_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer (pad 0, eos 1, unk 2 as umT5) trained on the action sentences: any text
    encodes, the action sentences in few tokens. Built locally, deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from yume.tasks.action_text import VOCABULARIES, all_action_sentences

    corpus = [s for v in VOCABULARIES for s in all_action_sentences(v).values()]
    corpus += ["First-person perspective.", "A street at night, rain falls and people walk past shops."]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


class TextEncoder:
    """umT5 encoder + tokenizer. ``encode`` returns per-text embeddings trimmed to their token counts.
    ``calls`` counts encoder forward passes (tests use it to prove cache hits)."""

    def __init__(self, model, tokenizer, encoder_id: str, max_length: int = 512):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.encoder_id = encoder_id
        self.max_length = max_length
        self.calls = 0

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def from_config(cls, cfg: TextConfig) -> "TextEncoder":
        if cfg.pretrained_path:
            return cls.from_pretrained(cfg.pretrained_path, max_length=cfg.max_length, dtype=_DTYPES[cfg.dtype])
        if cfg.tiny is None:
            raise ValueError("text.pretrained_path is required (a local umT5 encoder dir) when text.tiny is null")
        return cls.tiny_random(cfg.tiny, max_length=cfg.max_length)

    @classmethod
    def from_pretrained(cls, path: str | Path, tokenizer_path: str | Path | None = None, max_length: int = 512,
                        dtype: torch.dtype = torch.bfloat16, device: str = "cpu") -> "TextEncoder":
        """A local umT5 encoder dir (diffusers Wan layout: ``text_encoder/``, tokenizer in ``../tokenizer``
        unless the dir has its own). The encoder id hashes config.json and the weight files' names/sizes."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        p = Path(path)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p}/config.json not found (expected a local umT5 encoder directory)")
        if tokenizer_path is None:
            has_own = any((p / n).exists() for n in ("tokenizer.json", "spiece.model", "tokenizer_config.json"))
            tokenizer_path = p if has_own else p.parent / "tokenizer"
        model = UMT5EncoderModel.from_pretrained(str(p), dtype=dtype).to(device)
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
        files = sorted((f.name, f.stat().st_size) for f in p.glob("*.safetensors"))
        enc_id = f"umt5:{p.name}:{_sha((p / 'config.json').read_text() + json.dumps(files))}"
        return cls(model, tokenizer, enc_id, max_length)

    @classmethod
    def tiny_random(cls, tiny: TinyUMT5Config | None = None, max_length: int = 512) -> "TextEncoder":
        """A random-init umT5 encoder of the real architecture, for tests and the tiny profile."""
        from transformers import UMT5Config, UMT5EncoderModel

        tiny = tiny or TinyUMT5Config()
        tokenizer = build_tiny_tokenizer()
        config = UMT5Config(vocab_size=len(tokenizer), d_model=tiny.d_model, d_kv=tiny.d_kv, d_ff=tiny.d_ff,
                            num_layers=tiny.num_layers, num_heads=tiny.num_heads,
                            relative_attention_num_buckets=tiny.relative_attention_num_buckets,
                            dropout_rate=0.0, is_encoder_decoder=False)
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(tiny.seed)
        try:
            model = UMT5EncoderModel(config)
        finally:
            torch.random.set_rng_state(gen_state)
        digest = hashlib.sha256()
        for name, t in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(t.detach().float().numpy().tobytes())
        return cls(model, tokenizer, f"tiny-umt5:{digest.hexdigest()[:16]}", max_length)

    @torch.no_grad()
    def encode(self, texts: list[str], max_length: int | None = None) -> list[torch.Tensor]:
        """One encoder pass over ``texts`` -> a [L_i, D] embedding per text (L_i = its token count)."""
        if not texts:
            return []
        enc = self.tokenizer(list(texts), padding="longest", truncation=True,
                             max_length=max_length or self.max_length, return_tensors="pt")
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        self.calls += 1
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        lengths = mask.sum(dim=1).tolist()
        return [hidden[i, : int(n)].float().cpu() for i, n in enumerate(lengths)]


def combine_embeddings(action: torch.Tensor | None, event: torch.Tensor | None, max_length: int = 512,
                       order: str = "action_first") -> torch.Tensor:
    """Concatenate action and event embeddings within ``max_length`` tokens, zero-padded ([max_length, D]).
    The action (the control signal) is kept whole; the event is truncated to the remaining budget."""
    parts = [t for t in (action, event) if t is not None]
    if not parts:
        raise ValueError("combine_embeddings: need an action or an event embedding")
    dim = parts[0].shape[-1]
    action = action if action is not None else parts[0].new_zeros(0, dim)
    event = event if event is not None else parts[0].new_zeros(0, dim)
    action = action[:max_length]
    event = event[: max_length - action.shape[0]]
    seq = torch.cat([action, event] if order == "action_first" else [event, action], dim=0)
    return torch.cat([seq, seq.new_zeros(max_length - seq.shape[0], dim)], dim=0)


class ActionEmbeddingCache:
    """The embeddings of every action sentence of a vocabulary, encoded once and stored in
    ``<cache_dir>/action_text_<encoder>_<vocabulary hash>.safetensors``. A file written for another encoder,
    vocabulary, prefix or budget is never used (its name differs, and its metadata is checked)."""

    def __init__(self, encoder: TextEncoder, cache_dir: str | Path | None = None, vocabulary: str = "yume15",
                 prefix: str = "First-person perspective. ", max_length: int = 512):
        from yume.tasks.action_text import all_action_sentences, vocabulary_hash

        self.encoder = encoder
        self.vocabulary = vocabulary
        self.prefix = prefix
        self.max_length = max_length
        self.sentences = {k: prefix + s for k, s in all_action_sentences(vocabulary).items()}
        self.meta = {"encoder_id": encoder.encoder_id, "vocabulary": vocabulary,
                     "vocabulary_hash": vocabulary_hash(vocabulary), "prefix": prefix, "max_length": str(max_length)}
        key = _sha(json.dumps(self.meta, sort_keys=True))
        self.path = (Path(cache_dir) / f"action_text_{_sha(encoder.encoder_id)}_{self.meta['vocabulary_hash']}"
                     f"_{key}.safetensors") if cache_dir is not None else None
        self._table: dict[tuple[str, str], torch.Tensor] | None = None

    def _labels(self) -> list[tuple[str, str]]:
        return list(self.sentences)

    def load(self) -> dict[tuple[str, str], torch.Tensor]:
        """The table, from memory, from the cache file, or encoded now (one batched pass) and saved."""
        if self._table is not None:
            return self._table
        if self.path is not None and self.path.is_file():
            table = self._read()
            if table is not None:
                self._table = table
                return table
        labels = self._labels()
        embs = self.encoder.encode([self.sentences[k] for k in labels], self.max_length)
        self._table = dict(zip(labels, embs))
        if self.path is not None:
            self._write()
        return self._table

    def _read(self) -> dict[tuple[str, str], torch.Tensor] | None:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            meta = f.metadata() or {}
            if any(meta.get(k) != v for k, v in self.meta.items()):
                return None
            labels = [tuple(x) for x in json.loads(meta["labels"])]
            return {lab: f.get_tensor(f"a{i}") for i, lab in enumerate(labels)}

    def _write(self) -> None:
        from safetensors.torch import save_file

        labels = self._labels()
        tensors = {f"a{i}": self._table[lab].contiguous() for i, lab in enumerate(labels)}
        meta = dict(self.meta, labels=json.dumps(labels, ensure_ascii=False))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(self.path)

    def get(self, keys: str, mouse: str) -> torch.Tensor:
        table = self.load()
        if (keys, mouse) not in table:
            raise KeyError(f"no action sentence for keys={keys!r} mouse={mouse!r} in vocabulary {self.vocabulary!r}")
        return table[(keys, mouse)]


class TextConditioner:
    """Event + action text -> [B, max_length, D] embeddings for the DiT. Actions come from the cache;
    event texts are encoded in one batched pass and memoised (LRU) since events change rarely."""

    def __init__(self, encoder: TextEncoder, cfg: TextConfig | None = None, cache_dir: str | Path | None = None,
                 event_memo: int = 256):
        self.cfg = cfg or TextConfig()
        self.encoder = encoder
        self.actions = ActionEmbeddingCache(encoder, cache_dir, self.cfg.vocabulary, self.cfg.action_prefix,
                                            self.cfg.max_length)
        self._events: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._memo = event_memo

    def _event_embeddings(self, events: list[str]) -> dict[str, torch.Tensor]:
        todo = sorted({e for e in events if e and e not in self._events})
        for text, emb in zip(todo, self.encoder.encode(todo, self.cfg.max_length)):
            self._events[text] = emb
        out = {e: self._events[e] for e in events if e}
        for e in out:
            self._events.move_to_end(e)
        while len(self._events) > self._memo:
            self._events.popitem(last=False)
        return out

    def __call__(self, actions: list[tuple[str, str] | None], events: list[str] | None = None) -> torch.Tensor:
        events = events if events is not None else [""] * len(actions)
        if len(events) != len(actions):
            raise ValueError(f"{len(actions)} actions but {len(events)} events")
        ev = self._event_embeddings([e.strip() for e in events])
        rows = []
        for act, event in zip(actions, events):
            a = self.actions.get(*act) if act is not None else None
            e = ev.get(event.strip())
            if a is None and e is None:
                rows.append(torch.zeros(self.cfg.max_length, self.encoder.dim))
            else:
                rows.append(combine_embeddings(a, e, self.cfg.max_length, self.cfg.order))
        return torch.stack(rows)
