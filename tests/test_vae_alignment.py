"""Training samples for a temporal codec (the Wan VAE) are encoded as inference encodes them: a T2V target is the
chunk encoded on its own (latent 0 one frame), a still-image sample is the anchor image repeated then the chunk,
never a slice of the whole clip's latents (which carry the frames before them). A tiny random Wan VAE, real code."""

import numpy as np
import pytest
import torch

from yume.config import load_profile

VAE = [
    "model.dit_init=random", "model.codec={kind: wan_vae, tiny_random: true}",
    "world.height=64", "world.width=64", "train.height=64", "train.width=64",
    "training_set.sources={procedural: {i2v: 1.0, t2v: 1.0}}",
    "training_set.worlds={n_clips: 2, height: 64, width: 64, frames_per_clip: 120, supersample: 1, seed: 5,"
    " trajectory: {segment_frames: [60, 80]}}",
    "training_set.cache_dtype=float32", "training_set.aligned_per_row=2",
    "train.batch_size=2", "train.still_image_p=0.5", "train.still_image_frames=2", "train.history_frames=[1, 2]",
    "train.long_history_p=0.0", "train.max_steps=40", "train.eval.enabled=false",
]


@pytest.fixture(scope="module")
def vae_set(tmp_path_factory):
    from yume.datasets.training_set import collect_training_rows, label_worlds
    from yume.tasks.build_training_set import build_cache, ensure_training_worlds, write_train_manifest

    work = tmp_path_factory.mktemp("vae") / "w"
    prof = load_profile("tiny", str(work), VAE)
    rows, _ = collect_training_rows(prof, label_worlds(prof, ensure_training_worlds(prof)))
    write_train_manifest(prof, rows)
    build_cache(prof, rows)
    return prof


def _frames(ds, r):
    from yume.datasets.training_set import read_clip_frames

    row = ds.records[r]
    return read_clip_frames(ds.roots[row["video_root"]] / row["video_uri"], int(row["clip_frames"]),
                            int(ds.table.stride[r]), ds.settings.height, ds.settings.width, 4)


def test_t2v_and_still_samples_are_the_encodings_inference_makes(vae_set):
    from yume.datasets.foundation_data import mode_of_step, still_step
    from yume.datasets.training_set import aligned_pixel_indices
    from yume.models.codecs import build_codec
    from yume.tasks.train_foundation import build_module_and_data, prepare_run

    prof = vae_set
    _, dm = build_module_and_data(prepare_run(prof))
    ds = dm.train_dataloader().dataset
    s = ds.settings
    assert ds.aligned and all(1 <= len(p) <= 2 for p in ds.aligned)
    codec = build_codec(prof.model.codec)
    seen = set()
    for step in range(40):
        mode = mode_of_step(step, s.i2v_fraction)
        kind = "still" if still_step(s, step, mode) else ("t2v" if mode == "t2v" else None)
        if kind is None or kind in seen:
            continue
        seen.add(kind)
        index = step * s.batch_size
        item = ds[index]
        rng = np.random.default_rng([s.seed, index])
        r, _ = ds.table.draw(rng, "i2v" if kind == "still" else "t2v")
        rng.random(), rng.random()
        c = ds.aligned[r][int(rng.integers(len(ds.aligned[r])))]
        t2v_idx, still_idx = aligned_pixel_indices(c, s.chunk, s.still_image_frames, 4)
        frames = _frames(ds, r)[t2v_idx if kind == "t2v" else still_idx]
        video = torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(127.5).sub(1)[None]
        expected = codec.encode(video)[0]
        n_hist = 0 if kind == "t2v" else s.still_image_frames
        assert item["n_history"] == n_hist and item["span"].shape[1] == n_hist + s.chunk
        torch.testing.assert_close(item["span"], expected, atol=1e-5, rtol=0)
        # ... and it is not the whole-clip slice the cache path used to give (latent 0 of a chunk differs).
        whole = ds._latents(ds.records[r]["clip_key"], c, c + s.chunk).permute(1, 0, 2, 3)
        assert not torch.allclose(item["span"][:, n_hist:], whole, atol=1e-3)
    assert seen == {"t2v", "still"}


def test_the_pixel_path_reads_the_same_frames_for_a_still_step(vae_set):
    """Without the cache the data module hands pixels: anchor repeated 4 (n - 1) + 1 times, then the chunk."""
    from yume.datasets.foundation_data import mode_of_step, still_step
    from yume.tasks.train_foundation import build_module_and_data, prepare_run

    prof = load_profile("tiny", str(vae_set.workdir_path), VAE + ["training_set.cache=false"])
    _, dm = build_module_and_data(prepare_run(prof))
    ds = dm.train_dataloader().dataset
    s = ds.settings
    step = next(st for st in range(40) if still_step(s, st, mode_of_step(st, s.i2v_fraction)))
    item = ds[step * s.batch_size]
    span = item["span"]  # [3, T, H, W] pixels
    assert not item["is_latent"] and span.shape[1] == 4 * (s.still_image_frames - 1) + 1 + 4 * s.chunk
    for k in range(4 * (s.still_image_frames - 1) + 1):
        assert torch.equal(span[:, k], span[:, 0])
