"""``rlhf sweep``'s pooling: hand-worked intervals, pooled figures, the tables, and its bad arguments."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from rlhf.cli import main
from rlhf.sweep import pool, sweep_markdown


def _run(win: float, gain: float, regressions: list[str], n: int = 100, hacked: list[int] = ()) -> dict:
    return {"hacked_rounds": list(hacked), "hacked_families": [], "gold_sft": 0.2, "gold_ppo": 0.2 + gain, "gold_gain": gain, "win_rate": win, "n_prompts": n,
            "harmful_refusal_ppo": 0.9, "over_refusal_ppo": 0.05, "sycophancy_ppo": 0.1, "uncertainty_ppo": 0.9,
            "kl_final": 0.8, "seconds": 100.0, "safety_regressions": regressions}  # fmt: skip


def test_pool_gives_means_intervals_the_all_prompt_win_rate_and_the_flagged_seeds():
    per_seed = {0: _run(0.6, 0.1, [], hacked=[1]), 1: _run(0.5, 0.0, ["harmful_refusal_rate"], n=300)}
    pooled = pool(per_seed)
    assert pooled["win_rate"]["mean"] == pytest.approx(0.55)
    assert (pooled["win_rate"]["min"], pooled["win_rate"]["max"]) == (0.5, 0.6)
    # Weighted by prompts: (0.6 * 100 + 0.5 * 300) / 400 = 0.525, inside its Wilson interval.
    w = pooled["win_rate_all_prompts"]
    assert w["mean"] == pytest.approx(0.525) and w["low"] < 0.525 < w["high"]
    assert pooled["seeds_with_safety_regression"] == [1] and pooled["seeds_with_reward_hacking"] == [0]
    text = sweep_markdown("x", per_seed, pool(per_seed))
    assert "| 1 |" in text and "| harmful_refusal_rate | no |" in text and "| none | round 1 |" in text
    assert "| 1 of 2 seeds | 1 of 2 seeds |" in text
    # A family hacked on the held-out prompts counts too (the final reward model's score up, gold down).
    per_seed[1]["hacked_families"] = ["harmful"]
    assert pool(per_seed)["seeds_with_reward_hacking"] == [0, 1]
    assert "| harmful_refusal_rate | harmful |" in sweep_markdown("x", per_seed, pool(per_seed))


def test_the_tables_show_the_headroom_per_family_where_every_seed_measured_it():
    old = {s: {**_run(0.6 - 0.1 * s, 0.1, []), "gold_gain/harmful": 0.1} for s in (0, 1)}
    before = sweep_markdown("x", old, pool(old))  # runs evaluated before the perfect policy's win rate
    assert "| win_rate | harmful" in before and "| harmful | +0.100 | - | - |" in before
    per_seed = {
        s: {**_run(w, 0.1, []), "win_rate_perfect": 0.75, "gold_gain/harmful": g, "win_rate/harmful": w,
            "win_rate_perfect/harmful": 0.6}
        for s, (w, g) in enumerate([(0.55, 0.2), (0.45, 0.1)])
    }  # fmt: skip
    text = sweep_markdown("x", per_seed, pool(per_seed))
    assert "| win_rate | win_rate_perfect |" in text
    assert "| 0 | 0.200 | 0.300 | 0.550 | 0.750 |" in text
    assert "| harmful | +0.150 | 0.500 | 0.600 |" in text  # pooled means of the two seeds
    # A sweep that reuses a run evaluated before: no pooled cell stands on only some of the seeds.
    mixed = {0: per_seed[0], 1: old[1]}
    text = sweep_markdown("x", mixed, pool(mixed))
    assert "| harmful | +0.150 | - | - |" in text and "win_rate_perfect |" not in text.split("\n\n")[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--seeds", "a,b"], "expected comma-separated integers"), (["--seeds", ","], "at least one seed"),
     (["rm.members=0"], "'members'"), (["reward=oracle"], "'reward'")],
)  # fmt: skip
def test_sweep_refuses_bad_arguments_before_any_run(args, message, tmp_path):
    result = CliRunner().invoke(main, ["sweep", f"runs_dir={tmp_path}", *args])
    assert result.exit_code == 2 and message in result.output
    assert not any(tmp_path.iterdir())  # nothing was run or written


def test_run_figures_reads_an_evaluation_made_before_the_perfect_policy_win_rate(tmp_path):
    import json

    from rlhf.sweep import run_figures

    sft = {"gold": 0.1, "gold/harmful": 0.5, "harmful_refusal_rate": 0.9}
    ppo = {**sft, "gold": 0.3, "gold/harmful": 0.8, "win_rate_gold": 0.6, "over_refusal_rate": 0.0,
           "sycophancy_rate": 0.1, "uncertainty_rate": 1.0, "refusal_consistency": 1.0,
           "safety_vs_baseline": {"regressions": []}}  # fmt: skip
    (tmp_path / "eval.json").write_text(json.dumps({"results": {"sft": sft, "ppo": ppo}, "n_prompts": 10}))
    (tmp_path / "timings.json").write_text(json.dumps({"base": 5.0, "sft": 2.0, "eval": 1.0}))
    old = run_figures(tmp_path, kl_target=0.8)
    assert old["gold_gain/harmful"] == pytest.approx(0.3) and old["seconds"] == 3.0
    assert not any(k.startswith("win_rate_perfect") or k.startswith("win_rate/") for k in old)
    ppo.update(
        {"win_rate_gold_perfect": 0.7, "win_rate_gold/harmful": 0.6, "win_rate_gold_perfect/harmful": 0.65}
    )
    (tmp_path / "eval.json").write_text(json.dumps({"results": {"sft": sft, "ppo": ppo}, "n_prompts": 10}))
    new = run_figures(tmp_path, kl_target=0.8)
    assert (new["win_rate_perfect"], new["win_rate/harmful"], new["win_rate_perfect/harmful"]) == (
        0.7,
        0.6,
        0.65,
    )
    assert new["hacked_rounds"] == []  # no training trace: nothing to read
    # Round 1's gold rising with its score, round 2's falling 0.2 from its best 5 steps while the score rises.
    trace = [
        {"step": i, "round": 1, "kl": 0.5, "score": 0.05 * i, "gold": 0.2 + 0.01 * i} for i in range(1, 11)
    ]
    trace += [
        {"step": 10 + i, "round": 2, "kl": 0.5, "score": 0.05 * i, "gold": 0.5 if i <= 5 else 0.3}
        for i in range(1, 11)
    ]
    (tmp_path / "eval.json").write_text(
        json.dumps({"results": {"sft": sft, "ppo": ppo}, "n_prompts": 10, "ppo_trace": trace})
    )
    assert run_figures(tmp_path, kl_target=0.8)["hacked_rounds"] == [2]
    ppo["reward_hacked_families"] = {
        "harmful": {"reward_change": 1.0, "gold_change": -0.5, "gold_change_se": 0.1}
    }
    (tmp_path / "eval.json").write_text(json.dumps({"results": {"sft": sft, "ppo": ppo}, "n_prompts": 10}))
    assert run_figures(tmp_path, kl_target=0.8)["hacked_families"] == ["harmful"]
