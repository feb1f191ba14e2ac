"""`yume generate --label`: each chunk's commanded and measured labels (the instruction-following metric)."""

import json

import numpy as np

from yume.config import load_profile


def test_chunk_labels_read_ground_truth_renders_as_commanded():
    from yume.models.sampler import ChunkAction, chunk_labels
    from yume.tasks.foundation_eval import metric_config, render_eval_worlds

    prof = load_profile("tiny", None, ["train.eval.clips=3", "train.eval.chunks=8"])
    w = render_eval_worlds(prof, 4, 2)
    mcfg = metric_config(prof)
    correct = total = 0
    for i in range(3):
        acts = [ChunkAction(k, m) for k, m in w.commanded[i]]
        rows = chunk_labels(w.frames[i], acts, 4, mcfg, first_chunk_start=1)  # I2V: frame 0 is the image
        assert [r["chunk"] for r in rows] == list(range(8))
        assert all(r["commanded"] == f"{a.keys}:{a.mouse}" for r, a in zip(rows, acts))
        correct += sum(r["correct"] for r in rows)
        total += len(rows)
        t2v = chunk_labels(w.frames[i, 1:], acts, 4, mcfg, first_chunk_start=None)  # no image: chunk 0 unanchored
        assert [r["chunk"] for r in t2v] == list(range(1, 8))
        assert [r["measured"] for r in t2v] == [r["measured"] for r in rows[1:]]
    assert correct / total >= 0.75, (correct, total)  # the metric's ceiling on ground truth is ~0.93


def test_yume_generate_label_prints_commanded_and_measured(tmp_path):
    from yume.cli import main
    from yume.models.train_config import TrainConfig
    from yume.models.wan_dit import WanDiT

    cfg = load_profile("tiny").model.model_copy(update={"dit_init": "random"})
    d = tmp_path / "final"
    WanDiT.from_config(cfg).save_pretrained(d)
    (d / "yume_model.json").write_text(json.dumps({"model_config": cfg.model_dump(mode="json"),
                                                   "train_config": TrainConfig().model_dump(mode="json")}))
    import cv2

    img = tmp_path / "start.png"
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    out = tmp_path / "o.mp4"
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert main(["generate", "--checkpoint", str(d), "--image", str(img), "--actions", "W:>*2, -:^",
                     "--out", str(out), "--set", "sampler.steps=2", "--label"]) == 0
    result = json.loads(stdout.getvalue())
    assert [r["commanded"] for r in result["labels"]] == ["W:→", "W:→", "None:↑"]
    assert result["correct_chunks"] == sum(r["correct"] for r in result["labels"])
    assert f"{result['correct_chunks']} of 3 chunks labelled as commanded" in stderr.getvalue()


def test_shuffled_actions_permute_each_chunk_across_clips():
    from collections import Counter

    from yume.tasks.action_text import KEY_LABELS, MOUSE_LABELS
    from yume.tasks.foundation_eval import shuffled_actions

    rng = np.random.default_rng(0)
    cmd = [[(KEY_LABELS[rng.integers(9)], MOUSE_LABELS[rng.integers(9)]) for _ in range(12)] for _ in range(24)]
    sh = shuffled_actions(cmd, 20000)
    assert sh == shuffled_actions(cmd, 20000) and sh != shuffled_actions(cmd, 1)
    for c in range(12):  # each chunk's actions are the same multiset, moved to other clips
        assert Counter(cmd[i][c] for i in range(24)) == Counter(sh[i][c] for i in range(24))
    moved = sum(sh[i][c] != cmd[i][c] for i in range(24) for c in range(12)) / (24 * 12)
    assert moved > 0.8
