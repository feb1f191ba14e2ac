"""Profiles: validation with messages naming the key, overrides, hashes, recorded config."""

import json

import pytest

from yume.config import ConfigError, config_hash, load_profile, record_config, stage_hash


@pytest.mark.parametrize("name", ["tiny", "yume15"])
def test_embedded_profiles_load(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.actions.mode == "robust"


def test_unknown_key_is_rejected_with_its_name(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\nworkdir: w\nactions:\n  mode: robust\n  strid: 2\n")
    with pytest.raises(ConfigError, match=r"actions\.strid"):
        load_profile(str(bad))


@pytest.mark.parametrize(
    "override, key",
    [("actions.mode=fast", "actions.mode"), ("actions.stride=0", "actions.stride"),
     ("curate_real.shard_size=-3", "curate_real.shard_size"), ("bogus.key=1", "bogus")],
)
def test_bad_values_are_rejected_with_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_profile("tiny", overrides=[override])


def test_unknown_profile_and_missing_file():
    with pytest.raises(ConfigError, match="unknown profile"):
        load_profile("huge")
    with pytest.raises(ConfigError, match="does not exist"):
        load_profile("/nonexistent/p.yaml")


def test_overrides_and_hashes(tmp_path):
    base = load_profile("tiny", workdir=tmp_path / "a")
    moved = load_profile("tiny", workdir=tmp_path / "b")
    assert config_hash(base) == config_hash(moved)  # the work directory is not part of the hash
    changed = load_profile("tiny", overrides=["actions.mode=yume"])
    assert changed.actions.mode == "yume"
    assert config_hash(changed) != config_hash(base)
    assert stage_hash(changed, "actions") != stage_hash(base, "actions")
    assert stage_hash(changed, "curate_real") == stage_hash(base, "curate_real")


def test_resolved_config_is_recorded(tmp_path):
    profile = load_profile("tiny", workdir=tmp_path)
    h = record_config(profile, tmp_path / "rec")
    saved = json.loads((tmp_path / "rec" / "config.resolved.json").read_text())
    assert saved["config_hash"] == h == config_hash(profile)
    assert saved["profile"]["actions"]["min_segment_frames"] == 33


def test_model_section_expands_its_preset_and_takes_overrides():
    from yume.models.config import tiny_model_config

    # The tiny profile is the preset plus its pretrained base (train_foundation fine-tunes it).
    assert load_profile("tiny").model == tiny_model_config().model_copy(
        update={"dit_init": "pretrained", "dit_pretrained_path": "weights/tiny_base"})
    p = load_profile("tiny", overrides=["model.dit.num_layers=2", "model.tscm.enabled=false"])
    assert p.model.dit.num_layers == 2 and not p.model.tscm.enabled
    assert p.model.dit.ffn_dim == tiny_model_config().dit.ffn_dim
    assert load_profile("yume15").model.dit.num_layers == 30


def test_unknown_model_preset_and_key_are_named():
    with pytest.raises(ConfigError, match="model.preset"):
        load_profile("tiny", overrides=["model.preset=huge"])
    with pytest.raises(ConfigError, match="model.dit.num_layerz"):
        load_profile("tiny", overrides=["model.dit.num_layerz=2"])


def test_yume15_trains_on_a100_workers_with_the_papers_settings(tmp_path):
    """The paper profile's training and distillation run on Ray Train A100 workers (not the in-process defaults),
    predict velocity as the real Wan weights do, and use the 5B model's shift 7."""
    p = load_profile("yume15", workdir=tmp_path)
    for ray in (p.train.ray, p.distill.ray):
        assert ray.enabled and ray.use_gpu and ray.accelerator_type == "A100"
    assert p.train.ray.num_workers * p.train.batch_size == 40
    assert p.train.prediction == "velocity" and p.train.t_shift == 7.0 and p.distill.shift == 7.0
    assert (p.train.height, p.train.width) == (704, 1280)


def test_cluster_profiles_refuse_a_relative_work_directory(tmp_path):
    """Was: yume15's `workdir: runs/yume15`, i.e. the worker's checkout on one node's local disk."""
    from yume.config import ConfigError

    assert load_profile("yume15").workdir_path.is_absolute()
    assert load_profile("yume15", tmp_path).workdir_path == tmp_path.resolve()
    with pytest.raises(ConfigError, match="absolute work directory on storage every node mounts"):
        load_profile("yume15", "runs/yume15")
    assert load_profile("tiny", "runs/x").workdir == "runs/x"  # the demo profile keeps its local default


def test_random_vbench_weights_are_explicit_and_refused_on_yume15():
    """vbench_weights=random runs vbench's code on random-init backbones: a tiny-only choice, never a default."""
    vbench = ["score_and_filter.scorer=vbench", "score_and_filter.policy=vbench-leaderboard@1"]
    assert load_profile("tiny", overrides=vbench).score_and_filter.vbench_weights == "cache"
    assert load_profile("yume15", "/tmp/unused").score_and_filter.vbench_weights == "cache"
    tiny = load_profile("tiny", overrides=[*vbench, "score_and_filter.vbench_weights=random"])
    assert tiny.score_and_filter.vbench_weights == "random"
    with pytest.raises(ConfigError) as err:
        load_profile("yume15", "/tmp/unused", overrides=["score_and_filter.vbench_weights=random"])
    assert str(err.value).startswith("invalid configuration: --set score_and_filter.vbench_weights=random: 'random' "
                                     "is refused on profile 'yume15'")
    with pytest.raises(ConfigError, match="score_and_filter.vbench_weights"):
        load_profile("tiny", overrides=["score_and_filter.vbench_weights=fallback"])
