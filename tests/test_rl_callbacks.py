"""medssr.rl.callbacks: TRL log keys mapped to stable metric names, and the per-step history a resumed run restores."""

from __future__ import annotations

import json

from medssr.rl.callbacks import step_metrics


def test_trl_log_keys_map_to_stable_names():
    m = step_metrics({"reward": 0.5, "reward_std": 0.1, "kl": 0.01, "loss": 0.2, "learning_rate": 1e-6, "step_time": 4.0,
                      "completions/mean_length": 30.0, "medssr/generation_s": 3.0, "medssr/completion_tokens": 120.0,
                      "medssr/distinct_answers": 2.0, "epoch": 0.1, "rewards/medssr_majority/mean": 0.5})
    assert m == {"reward_mean": 0.5, "reward_std": 0.1, "kl": 0.01, "loss": 0.2, "learning_rate": 1e-6, "step_time_s": 4.0,
                 "completion_length": 30.0, "generation_s": 3.0, "distinct_answers": 2.0, "tokens_per_s": 30.0, "update_s": 1.0}


def test_history_restored_from_a_saved_trainer_state_is_the_history_that_was_logged(tmp_path):
    from transformers import TrainerState

    from medssr.rl.callbacks import MLflowStepCallback

    state, live = TrainerState(), MLflowStepCallback("stage1")
    for step in (1, 2):
        state.global_step = step
        logs = {"reward": 0.1 * step, "kl": 1e-4 / 3 / step, "loss": 0.5, "step_time": 2.0, "epoch": 0.5 * step,
                "medssr/generation_s": 1.5, "medssr/completion_tokens": 16.0, "medssr/peak_rss_mb": 900.0 + step}
        state.log_history.append({**logs, "step": step})  # as Trainer.log records it, before calling on_log
        live.on_log(None, state, None, logs=logs)
    state.save_to_json(tmp_path / "trainer_state.json")  # what checkpoint-2 keeps

    resumed = MLflowStepCallback("stage1")
    resumed.on_train_begin(None, TrainerState.load_from_json(str(tmp_path / "trainer_state.json")), None)
    assert json.dumps(resumed.history) == json.dumps(live.history)
    assert [r["step"] for r in resumed.history] == [1, 2] and resumed.history[1]["peak_rss_mb"] == 902.0
