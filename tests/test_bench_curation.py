"""`yume bench curation`: per-stage items/s on CPU with tiny models, and the paper-scale GPU-hour estimate."""

import json

from yume.tasks.bench_curation import WAN21_T2V_14B, dit_forward_flops, dit_tokens, main, paper_scale_estimate


def test_dit_token_and_flop_arithmetic():
    assert dit_tokens(WAN21_T2V_14B, 81, 720, 1280) == 21 * 45 * 80
    # Doubling the tokens more than doubles the FLOPs (attention is quadratic).
    assert dit_forward_flops(WAN21_T2V_14B, 2000) > 2 * dit_forward_flops(WAN21_T2V_14B, 1000)


def test_estimate_states_its_assumptions():
    est = paper_scale_estimate()
    assert est["assumptions"]["t2v"]["videos"] == 80_000 and est["assumptions"]["t2v"]["size"] == [720, 1280]
    assert est["assumptions"]["i2v"]["videos"] == 10_000 and est["assumptions"]["model_flop_utilisation"] == 0.35
    assert est["t2v"]["gpu_hours"] > est["i2v"]["gpu_hours"] > est["recaption"]["gpu_hours"] > 0
    assert est["total_gpu_hours"] == sum(est[k]["gpu_hours"] for k in ("t2v", "i2v", "recaption", "scoring"))
    assert paper_scale_estimate(mfu=0.7)["t2v"]["gpu_hours"] < est["t2v"]["gpu_hours"]


def test_bench_prints_one_json_object(capsys):
    assert main(["--json", "--items", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    stages = out["throughput"]["stages"]
    assert set(stages) == {"recaption_internvl", "recaption_metadata", "dedup_minilm", "synthesize_t2v",
                           "synthesize_events", "score_lite"}
    assert all(s["items_per_s"] > 0 for s in stages.values())
    assert "ok" in stages["synthesize_t2v"]["note"] and out["paper_scale_estimate"]["total_gpu_hours"] > 0
