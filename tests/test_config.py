"""Config: YAML round trip, typed `--set` overrides, errors that name the key, bases, grids."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from safeft.config import Config, config_from_dict, load_config, save_config
from safeft.errors import ConfigError

RICH = """
model:
  name_or_path: some/model
  dtype: float32
data:
  path: data/train.jsonl
  max_seq_len: 512
  mixture:
    - {path: a.jsonl, weight: 2}
    - {preset: gsm8k, limit: 100}
template:
  train: chat:vanilla
  test: [chat:llama, gsm:chat:mpt]
lookahead: {mode: virtual, prefix: "Let's go. "}
train:
  lr: 1e-4
  epochs: 2
  adam_betas: [0.5, 0.999]
eval:
  tasks: [{name: gsm8k, limit: 3}, {name: advbench}]
  gates: {advbench.keyword_asr: "<= 0.05"}
output: {dir: /tmp/runs}
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def from_overrides(*overrides, data=None):
    return config_from_dict(data or {}, list(overrides))


def test_yaml_round_trip(tmp_path):
    cfg = load_config(write(tmp_path, "rich.yaml", RICH))
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)  # YAML 1.1 reads 1e-4 as a string
    assert cfg.train.epochs == 2.0 and cfg.data.mixture[1].preset == "gsm8k" and cfg.eval.tasks[0].limit == 3
    assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    save_config(cfg, str(tmp_path / "out" / "saved.yaml"))
    assert load_config(str(tmp_path / "out" / "saved.yaml")) == cfg


def test_defaults_round_trip():
    cfg = Config()
    assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


def test_run_dir_defaults_to_the_file_stem(tmp_path):
    cfg = load_config(write(tmp_path, "my_exp.yaml", "output: {dir: out}\n"))
    assert cfg.output.name == "my_exp" and cfg.run_dir == "out/my_exp"
    assert load_config(write(tmp_path, "b.yaml", "output: {dir: out, name: x}\n")).run_dir == "out/x"


def test_overrides_are_typed(tmp_path):
    cfg = load_config(
        write(tmp_path, "c.yaml", "train: {lr: 2e-5}\n"),
        [
            "train.lr=1e-4",
            "data.max_seq_len=4096",
            "train.warmup_ratio=0.1",
            "template.test=[chat:llama, text:alpaca]",
            "train.adam_betas=[0.5, 0.95]",
            "data.mixture=[{path: a.jsonl, weight: 3}]",
            "eval.gates={advbench.keyword_asr: '<= 0.05'}",
            "model.trust_remote_code=true",
            "lookahead.connector=' Begins with: '",
            "lookahead.prefix= First, ",
        ],
    )
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.data.max_seq_len == 4096 and isinstance(cfg.data.max_seq_len, int)
    assert cfg.train.warmup_ratio == 0.1
    assert cfg.test_templates == ["chat:llama", "text:alpaca"]
    assert cfg.train.adam_betas == [0.5, 0.95]
    assert cfg.data.mixture[0].path == "a.jsonl" and cfg.data.mixture[0].weight == 3.0
    assert cfg.eval.gates == {"advbench.keyword_asr": "<= 0.05"}
    assert cfg.model.trust_remote_code is True
    assert cfg.lookahead.connector == " Begins with: "  # quoted: spaces kept
    assert cfg.lookahead.prefix == "First,"  # unquoted values are YAML: surrounding spaces go


def test_later_override_wins_and_nested_sections_are_created():
    cfg = from_overrides("train.lr=1e-4", "train.lr=3e-4", "ray.num_workers=4")
    assert cfg.train.lr == 3e-4 and cfg.ray.num_workers == 4


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.lrr=1", "unknown config key 'train.lrr'; did you mean 'train.lr'?"),
        ("trian.lr=1", "unknown config key 'trian'; did you mean 'train'?"),
        ("data.mixture=[{pth: a}]", "unknown config key 'data.mixture[0].pth'; did you mean 'data.mixture[0].path'?"),
    ],
)
def test_unknown_key_suggests_a_close_one(override, message):
    with pytest.raises(ConfigError) as e:
        from_overrides(override)
    assert message in str(e.value)


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.epochs=fast", "config key 'train.epochs': expected a number, got 'fast'"),
        ("data.max_seq_len=1.5", "config key 'data.max_seq_len': expected an integer, got 1.5"),
        ("data.packing=maybe", "config key 'data.packing': expected true or false, got 'maybe'"),
        ("train.zero_stage=1", "config key 'train.zero_stage': 1 is not allowed; expected one of 0, 2, 3"),
        ("train.scheduler=cosin", "expected one of 'cosine', 'linear', 'constant' (did you mean 'cosine'?)"),
        ("train.adam_betas=0.9", "config key 'train.adam_betas': expected a list, got 0.9"),
        ("train.adam_betas=[0.9, x]", "config key 'train.adam_betas[1]': expected a number, got 'x'"),
        ("train.lr=[1e-4, fast]", "config key 'train.lr': expected a number or a list, got"),
        ("data=3", "config key 'data': expected a mapping, got 3"),
        ("model.name_or_path=123", "config key 'model.name_or_path': expected a string, got 123"),
        ("train.lr.x=1", "config key 'train.lr'"),
    ],
)
def test_type_errors_name_key_value_and_expectation(override, message):
    with pytest.raises(ConfigError) as e:
        from_overrides(override)
    assert message in str(e.value)


@pytest.mark.parametrize(
    "override,message",
    [
        ("x", "override 'x': expected KEY=VALUE"),
        ("=3", "the key must be dotted names"),
        ("a..b=3", "the key must be dotted names"),
        ("train.lr=[1", "value is not valid YAML"),
    ],
)
def test_malformed_overrides(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        from_overrides(override)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.offload=all"],
         "config key 'train.offload': 'all' offloads parameters, which needs train.zero_stage: 3"),
        (["train.offload=optimizer", "train.zero_stage=0"],
         "config key 'train.offload': 'optimizer' offloads ZeRO's optimizer partitions, which needs"),
        (["template.train=chat:lama"], "config key 'template.train': unknown template 'chat:lama'"),
        (["template.test=[chat:llama, foo]"], "config key 'template.test': unknown template 'foo'"),
        (["lookahead.mode=reel"], "config key 'lookahead.mode': 'reel' is not one of none, real, virtual"),
        (["eval.gates={advbench.keyword_asr: about 5%}"],
         "config key 'eval.gates.advbench.keyword_asr': 'about 5%': expected a comparison such as '<= 0.05'"),
        (["eval.gates={advbench.keyword_asr: <= 1.2.3}"], "'<= 1.2.3': expected a comparison"),
        (["train.lr=2"], "config key 'train.lr': 2.0: expected a learning rate in (0, 1)"),
        (["data.mixture=[{weight: 1}]"], "config key 'data.mixture[0]': needs a 'path' or a 'preset'"),
        (["train.deepspeed_config=/nonexistent/ds.json"], "config key 'train.deepspeed_config'"),
        (["train.keep_checkpoints=false", "train.export=false"],
         "config key 'train.keep_checkpoints': false deletes the checkpoints once the run is exported"),
    ],
)
def test_cross_field_validation(overrides, message):
    with pytest.raises(ConfigError) as e:
        from_overrides(*overrides)
    assert message in str(e.value)


def test_valid_cross_field_combinations_pass():
    cfg = from_overrides("train.offload=all", "train.zero_stage=3",
                         "eval.gates={advbench.keyword_asr: '>= 1e-3', gsm8k.exact_match_strict: '< .5'}",
                         "template.train=gsm:chat:vanilla", "template.test=[chat-template:llama2]")
    assert cfg.train.offload == "all"


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        from_overrides("train.offload=all", "lookahead.mode=reel", "template.train=nope")
    msg = str(e.value)
    assert "train.offload" in msg and "lookahead.mode" in msg and "template.train" in msg


# --- files and bases ------------------------------------------------------------------------------


def test_base_inheritance_merges_sections(tmp_path):
    write(tmp_path, "base.yaml", "train: {lr: 1e-4, epochs: 6}\ndata: {max_seq_len: 512, seed: 1}\n")
    write(tmp_path, "more.yaml", "base: base.yaml\ndata: {seed: 2}\neval: {max_new_tokens: 64}\n")
    (tmp_path / "sub").mkdir()
    child = write(tmp_path, "sub/child.yaml", "base: [../base.yaml, ../more.yaml]\ntrain: {epochs: 3}\n")
    cfg = load_config(child, ["data.max_seq_len=1024"])
    assert cfg.train.lr == 1e-4 and cfg.train.epochs == 3.0  # child over base, sibling keys kept
    assert cfg.data.seed == 2 and cfg.eval.max_new_tokens == 64  # later bases over earlier ones
    assert cfg.data.max_seq_len == 1024  # --set over everything
    assert cfg.output.name == "child"


def test_base_cycle_and_missing_base(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="form a cycle"):
        load_config(str(tmp_path / "a.yaml"))
    with pytest.raises(ConfigError, match=r"missing\.yaml' does not exist"):
        load_config(write(tmp_path, "c.yaml", "base: missing.yaml\n"))


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(write(tmp_path, "bad.yaml", "train: [1\n"))
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list"):
        load_config(write(tmp_path, "list.yaml", "- 1\n"))
    assert load_config(write(tmp_path, "empty.yaml", "")) == config_from_dict({}, name="empty")


# --- grids ----------------------------------------------------------------------------------------


def test_grid_expansion_is_the_product_of_axes():
    cfg = from_overrides("train.lr=[1e-4, 2e-5]", "train.seed=[1, 2, 3]", "template.train=[chat:vanilla, chat:llama]",
                         "template.test=[chat:llama, chat:vanilla]", "lookahead.mode=[none]")
    axes = cfg.grid_axes()
    assert list(axes) == ["template.train", "train.lr", "train.seed"]  # schema order; test templates are no axis
    runs = cfg.expand()
    assert len(runs) == 12
    points = [p for p, _ in runs]
    assert len({tuple(sorted(p.items())) for p in points}) == 12
    for point, run in runs:
        assert run.template.train == point["template.train"] and run.train.lr == point["train.lr"]
        assert run.train.seed == point["train.seed"]
        assert run.lookahead.mode == "none"  # a one-element list is a single value
        assert run.test_templates == ["chat:llama", "chat:vanilla"]
        assert run.grid_axes() == {} and run.single("train") == run
    assert cfg.train.lr == [1e-4, 2e-5]  # expanding does not modify the grid config


def test_single_rejects_a_grid():
    cfg = from_overrides("train.seed=[1, 2]")
    with pytest.raises(ConfigError) as e:
        cfg.single("train")
    msg = str(e.value)
    assert "config key 'train.seed' lists 2 values [1, 2]" in msg and "safeft sweep" in msg
    assert "--set train.seed=<one value>" in msg


def test_single_without_grid_is_the_config():
    cfg = from_overrides("train.lr=[3e-4]")
    assert cfg.single("train").train.lr == 3e-4


def test_keyword_lists_and_judge_rubrics_are_named_where_they_are_defined(monkeypatch):
    """One definition each: config validation and `safeft score --keyword-list` read the names from
    safeft.eval.refusal.KEYWORD_LISTS and safeft.eval.judge_prompts.JUDGE_PROMPTS (a new list needs no other edit)."""
    from safeft.cli import build_parser
    from safeft.eval import judge_prompts, refusal

    monkeypatch.setitem(refusal.KEYWORD_LISTS, "mine", ["No."])
    monkeypatch.setitem(judge_prompts.JUDGE_PROMPTS, "mine", "Q: %s A: %s")
    cfg = config_from_dict({"eval": {"keyword_list": "mine", "judge_prompt": "mine"}})
    assert (cfg.eval.keyword_list, cfg.eval.judge_prompt) == ("mine", "mine")
    assert build_parser().parse_args(["score", "--task", "keyword", "--input", "p.jsonl", "--keyword-list",
                                      "mine"]).keyword_list == "mine"
    with pytest.raises(ConfigError) as e:
        config_from_dict({"eval": {"keyword_list": "gcgg", "judge_prompt": "lookahed"}})
    assert "config key 'eval.keyword_list': 'gcgg' is not one of gcg, qi, lookahead, mine (did you mean 'gcg'?)" \
        in str(e.value)
    assert "config key 'eval.judge_prompt': 'lookahed' is not one of qi, lookahead, safeft, mine (did you mean " \
        "'lookahead'?)" in str(e.value)


# --- safety probes and trackers (train.safety_probe, train.report_to) -------------------------------


@pytest.mark.parametrize("overrides,message", [
    (["train.safety_probe.evry_steps=5"],
     "unknown config key 'train.safety_probe.evry_steps'; did you mean 'train.safety_probe.every_steps'?"),
    (["train.safety_probe.every_steps=0"], "config key 'train.safety_probe.every_steps': 0: expected >= 1"),
    (["train.safety_probe.n=0"], "config key 'train.safety_probe.n': 0: expected a positive number of prompts"),
    (["train.safety_probe.max_harmful=1.5"], "config key 'train.safety_probe.max_harmful': 1.5: expected a harmful"),
    (["train.safety_probe.action=stop"],
     "config key 'train.safety_probe.action': 'stop' needs train.safety_probe.max_harmful"),
    (["train.safety_probe.action=halt"], "config key 'train.safety_probe.action': 'halt' is not allowed"),
    (["train.safety_probe.judge=llama-guard"], "config key 'train.safety_probe.judge': 'llama-guard' is not allowed"),
    (["train.safety_probe.templates=[chat:lama]"],
     "config key 'train.safety_probe.templates': unknown template 'chat:lama'"),
    (["train.safety_probe.dataset=/nonexistent/harmful.csv"],
     "config key 'train.safety_probe.dataset': '/nonexistent/harmful.csv' is neither one of advbench, hexphi, "
     "harmful-demo nor an existing file"),
    (["train.report_to=[jsonl, wandbb]"], "config key 'train.report_to': unknown tracker 'wandbb'; known: jsonl, "
                                          "tensorboard, wandb, mlflow, none"),
    (["train.report_to=[none, mlflow]"], "config key 'train.report_to': 'none' cannot be combined"),
    (["train.wandb.mode=cloud"], "config key 'train.wandb.mode': 'cloud' is not allowed"),
    (["train.mlflow.experment=x"],
     "unknown config key 'train.mlflow.experment'; did you mean 'train.mlflow.experiment'?"),
])
def test_probe_and_tracker_keys_are_checked(overrides, message):
    with pytest.raises(ConfigError) as e:
        from_overrides(*overrides)
    assert message in str(e.value)


def test_probe_dataset_resolves_before_any_worker(tmp_path, monkeypatch):
    """A file is read by the evaluator's loaders now (a bad row fails here); HEx-PHI must be present."""
    good = tmp_path / "harmful.jsonl"
    good.write_text('{"instruction": "do harm"}\n{"instruction": "do more harm"}\n')
    cfg = from_overrides(f"train.safety_probe.dataset={good}", "train.safety_probe.max_harmful=0.1",
                         "train.safety_probe.action=stop", "train.report_to=[jsonl, wandb, mlflow]")
    assert cfg.train.safety_probe.task().name == "instructions" and cfg.train.safety_probe.task().sample == 64
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "do harm"}\n')
    with pytest.raises(ConfigError, match=r"safety_probe.dataset': .*bad.jsonl row 0: missing field 'instruction'"):
        from_overrides(f"train.safety_probe.dataset={bad}")
    assert from_overrides(f"train.safety_probe.dataset={bad}", "train.safety_probe.question_field=prompt")
    monkeypatch.setenv("SAFEFT_SHARED_DATA", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="train.safety_probe.dataset': task 'hexphi' needs a dataset path"):
        from_overrides("train.safety_probe.dataset=hexphi")


def test_wandb_online_without_a_key_is_refused_before_start(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="'online' needs WANDB_API_KEY in the environment"):
        from_overrides("train.report_to=[wandb]", "train.wandb.mode=online")
    assert from_overrides("train.report_to=[wandb]").train.wandb.mode == "auto"  # offline without a key
    monkeypatch.setenv("WANDB_API_KEY", "not-logged")
    assert from_overrides("train.report_to=[wandb]", "train.wandb.mode=online")
