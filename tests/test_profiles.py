"""medssr.profiles: every shipped profile merges onto params.yaml and validates; a bad or incomplete merge writes nothing."""

from pathlib import Path

import pytest
import yaml

from medssr.config import ConfigError, load_params
from tests.conftest import params_without

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("profile", sorted(p.stem for p in (ROOT / "params").glob("*.yaml")))
def test_every_profile_applies_and_validates(profile, tmp_path):
    from medssr.profiles import apply_profile

    target = tmp_path / "params.yaml"
    target.write_text((ROOT / "params.yaml").read_text())
    changed = apply_profile(profile, params_path=target)
    assert changed, f"profile {profile} changes nothing"
    load_params(target)
    assert "# medssr embedded default" in target.read_text()  # comments survive


def test_a_profile_with_a_bad_value_is_rejected_before_writing(tmp_path):
    from medssr.profiles import apply_profile

    target = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_text()
    target.write_text(original)
    bad = tmp_path / "bad.yaml"
    bad.write_text("synth:\n  rare_ratio: lots\n")
    with pytest.raises(ConfigError, match="synth.rare_ratio"):
        apply_profile(str(bad), params_path=target)
    assert target.read_text() == original


def test_a_profile_applied_onto_an_incomplete_params_file_names_the_missing_key(tmp_path):
    from medssr.profiles import apply_profile

    target = tmp_path / "params.yaml"
    target.write_text(yaml.safe_dump(params_without("label.sampling")))
    before = target.read_text()
    with pytest.raises(ConfigError, match=rf"smoke.yaml merged onto {target}: missing label.sampling.backend, "):
        apply_profile("smoke", params_path=target)  # smoke sets two label.sampling keys; the other eleven are missing
    assert target.read_text() == before


def _profile(name: str, tmp_path):
    from medssr.profiles import apply_profile

    target = tmp_path / "params.yaml"
    target.write_text((ROOT / "params.yaml").read_text())
    if name != "params":
        apply_profile(name, params_path=target)
    return load_params(target)


PAPER = ["paper-qwen3-8b", "paper-llama3.1-8b"]


@pytest.mark.parametrize("profile", PAPER)
def test_paper_profiles_vote_as_they_train_field_by_field(profile, tmp_path):
    """App. C.2: "During offline label voting, we set the same configurations as training" (issue 22.2)."""
    p = _profile(profile, tmp_path)
    vote, train = p.label.sampling, p.train
    assert (vote.temperature, vote.top_p, vote.top_k) == (train.temperature, train.top_p, -1)  # neither trainer caps top-k
    assert vote.max_new_tokens == train.max_completion_length
    assert vote.n == train.num_generations
    assert vote.stop_at_answer is False, "a rollout is read to its end (last answer); a vote must be too"
    # the template rule: the label stage, both trainers and evaluation take it from the same function and param
    from medssr.prompt_format import prompt_format

    assert prompt_format(p.model.policy, p.model.chat_template) == prompt_format(p.model.policy, p.model.chat_template)


def test_the_embedded_default_deviates_from_c2_only_where_params_yaml_says():
    """CPU budget: votes stop at the first committed answer and get 256 tokens; the comments say so."""
    p = load_params(ROOT / "params.yaml")
    vote, train = p.label.sampling, p.train
    assert (vote.temperature, vote.top_p, vote.n) == (train.temperature, train.top_p, 8) and vote.stop_at_answer is True
    text = (ROOT / "params.yaml").read_text()
    assert "a CPU deviation from App. C.2" in text


@pytest.mark.parametrize("profile,loss,scale,orl_agg", [
    ("params", "dapo", "group", "token-mean"),
    ("micro", "dapo", "group", "token-mean"),
    ("smoke", "dapo", "group", "token-mean"),
    ("paper-qwen3-8b", "dapo", "group", "token-mean"),
    ("paper-llama3.1-8b", "dapo", "group", "token-mean"),
])
def test_each_profile_states_its_loss_aggregation_and_both_backends_apply_it(profile, loss, scale, orl_agg, tmp_path):
    """Issue 22.7: every profile trains with verl's token-mean (the paper's trainer), stated with a comment."""
    from medssr.rl import openrlhf_backend as orl
    from medssr.rl.trl_backend import grpo_config

    p = _profile(profile, tmp_path)
    assert p.train.loss_type == loss
    import dataclasses

    train = dataclasses.replace(p.train, per_device_batch_size=max(p.train.per_device_batch_size, p.train.num_generations))
    cfg = grpo_config(train, p.train.stage1, tmp_path / "run", use_cpu=True)  # the same profile on TRL (one batch a group)
    assert (cfg.loss_type, cfg.scale_rewards) == (loss, scale)
    assert orl.LOSS_MAP[p.train.loss_type][1] == orl_agg
    src = ROOT / ("params.yaml" if profile == "params" else f"params/{profile}.yaml")
    if "loss_type" in src.read_text():
        above = "\n".join(src.read_text().split("loss_type:")[0].splitlines()[-4:])
        assert "token-mean" in above and "verl" in above, f"{src}: no comment above loss_type saying where it comes from"


def test_dr_grpo_on_trl_does_not_divide_by_the_group_std(tmp_path):
    """Dr. GRPO removes the std normalisation; TRL 1.16 keeps scale_rewards='group' unless told (issue 22.7)."""
    from medssr.rl.trl_backend import grpo_config

    p = load_params(ROOT / "params.yaml", {"train.loss_type": "dr_grpo"})
    cfg = grpo_config(p.train, p.train.stage1, tmp_path / "run", use_cpu=True)
    assert (cfg.loss_type, cfg.scale_rewards) == ("dr_grpo", "none")
