"""Experiment trackers (safeft.train.trackers): a short probed run logged to TensorBoard, wandb (offline: no key,
no network, stdin closed) and a real MLflow store, then evaluated with `safeft eval`, each read back with the
tracker's own reader; plus the pieces that need no run (modes, stores, names, a failing tracker)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO, cpu_env, probe_config, train_ok
from safeft.config import active_trackers, config_from_dict
from safeft.train import trackers as T
from safeft.train.metrics import MetricsLogger

# No key, no mode, no store from the machine; any network attempt would go to a closed local port.
NO_TRACKER_ENV = ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "MLFLOW_TRACKING_URI", "WANDB_PROJECT")
DEAD_URL = {"WANDB_BASE_URL": "http://127.0.0.1:9"}
STEPS = 3


@pytest.mark.parametrize("mode,env,expected", [
    ("auto", {}, "offline"), ("auto", {"WANDB_API_KEY": "k"}, "online"),
    ("auto", {"WANDB_MODE": "disabled"}, "disabled"),
    ("auto", {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}, "offline"),
    ("offline", {"WANDB_API_KEY": "k"}, "offline"),
])
def test_wandb_mode_is_online_only_with_a_key(monkeypatch, mode, env, expected):
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert T.wandb_mode(mode) == expected


def test_mlflow_store_defaults_to_sqlite_in_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, artifacts = T.mlflow_store(None, str(tmp_path / "run"))
    assert uri == f"sqlite:///{tmp_path}/run/mlflow/mlflow.db"
    assert artifacts == (tmp_path / "run" / "mlflow" / "artifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert T.mlflow_store(None, str(tmp_path)) == ("http://127.0.0.1:5000", None)
    assert T.mlflow_store("sqlite:///x.db", str(tmp_path)) == ("sqlite:///x.db", None)  # the config wins


def test_names_every_tracker_accepts():
    assert T.metric_key("safety", "chat:llama/harmful_rate") == "safety/chat-llama/harmful_rate"
    assert T.metric_key("eval", "vanilla,seed=0/advbench/chat-template:llama2/refusal_asr") == \
        "eval/vanilla_seed_0/advbench/chat-template-llama2/refusal_asr"
    assert T.flatten({"train": {"lr": 1e-5, "adam_betas": [0.5, 0.9], "wandb": {}}}) == \
        {"train.lr": 1e-5, "train.adam_betas": [0.5, 0.9], "train.wandb": {}}


@pytest.mark.parametrize("report_to,tensorboard,expected", [
    (["jsonl", "tensorboard"], None, ["jsonl", "tensorboard"]), (["jsonl", "tensorboard"], False, ["jsonl"]),
    (["jsonl"], True, ["jsonl", "tensorboard"]), (["none"], None, []), (["mlflow", "wandb"], None, ["mlflow", "wandb"]),
])
def test_output_tensorboard_still_switches_tensorboard(report_to, tensorboard, expected):
    cfg = config_from_dict({"train": {"report_to": report_to}, "output": {"tensorboard": tensorboard}})
    assert active_trackers(cfg) == expected


def test_a_failing_tracker_is_dropped_and_training_goes_on(caplog):
    class Broken(T.Tracker):
        name = "broken"

        def log_metrics(self, section, values, step):
            raise ConnectionError("server down")

    class Kept(T.Tracker):
        name = "kept"
        seen: list = []

        def log_metrics(self, section, values, step):
            self.seen.append((section, step))

    logger = MetricsLogger([Broken(), Kept()], is_main=True)
    logger.log({"loss": 1.0, "step": 1})
    logger.log({"loss": 0.5, "step": 2})
    assert [t.name for t in logger.trackers] == ["kept"] and Kept.seen == [("train", 1), ("train", 2)]
    assert sum("tracker broken failed in log_metrics (ConnectionError: server down)" in r.message
               for r in caplog.records) == 1


def test_a_tracker_that_cannot_start_is_left_out(tmp_path, caplog):
    """Rank 0 alone opens trackers: an error there must not stop it while the other ranks wait in a collective."""
    cfg = config_from_dict({"train": {"report_to": ["jsonl", "mlflow"], "mlflow": {"tracking_uri": "nope://x"}},
                            "output": {"dir": str(tmp_path), "name": "r"}})
    opened = T.open_trackers(cfg)
    assert [t.name for t in opened] == ["jsonl"] and T.read_record(cfg.run_dir) == {}
    assert any("tracker mlflow could not start" in r.message for r in caplog.records)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, sharp_model_dir):
    """3 steps, probed at 0, 1, 2, 3, logged to every tracker; then `safeft eval` of its export adds the evaluation."""
    tmp = tmp_path_factory.mktemp("trackers")
    cfg = probe_config(tmp / "tracked.yaml", sharp_model_dir, tmp, "tracked", {}, steps=STEPS,
                       report_to=["jsonl", "tensorboard", "wandb", "mlflow"], wandb={"project": "safeft-test"},
                       mlflow={"experiment": "safeft-test"})
    stdout = train_ok(cfg, 1, unset=NO_TRACKER_ENV, **DEAD_URL)
    env = cpu_env(**DEAD_URL)
    for name in NO_TRACKER_ENV:
        env.pop(name, None)
    ev = subprocess.run([sys.executable, "-m", "safeft", "eval", cfg, "--set", "eval.backend=local", "--set",
                         "eval.tasks=[{name: harmful-demo, limit: 4, max_new_tokens: 8}]"], cwd=REPO, env=env,
                        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
    run = tmp / "runs" / "tracked"
    return {"run": run, "stdout": stdout + ev.stdout + ev.stderr, "record": T.read_record(str(run))}


@pytest.mark.slow
def test_mlflow_local_store_holds_params_metrics_and_artifacts(tracked):
    from mlflow.tracking import MlflowClient

    record = tracked["record"]["mlflow"]
    assert record["tracking_uri"] == f"sqlite:///{tracked['run']}/mlflow/mlflow.db"
    client = MlflowClient(record["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert client.get_experiment(run.info.experiment_id).name == "safeft-test"
    params = run.data.params
    assert params["train.lr"] == "0.002" and json.loads(params["template.test"]) == ["chat:vanilla", "chat:llama"]
    assert params["train.safety_probe.max_new_tokens"] == "32"

    def history(key):
        return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}

    losses = [json.loads(line)["loss"] for line in open(tracked["run"] / "logs" / "metrics.jsonl")]
    assert history("train/loss") == {s + 1: pytest.approx(v) for s, v in enumerate(losses)}
    assert set(history("train/packing_efficiency")) == {1, 2, 3} and "train/tokens_per_s" in run.data.metrics
    curve = {(line["step"], line["template"]): line["harmful_rate"]
             for line in map(json.loads, open(tracked["run"] / "logs" / "safety_curve.jsonl"))}
    assert history("safety/chat-llama/harmful_rate") == {s: curve[s, "chat:llama"] for s in range(STEPS + 1)}
    assert history("eval/tracked/harmful-demo/chat-llama/refusal_asr")[STEPS] in (0.0, 0.25, 0.5, 0.75, 1.0)
    artifacts = {a.path for d in ("train", "eval") for a in client.list_artifacts(run.info.run_id, d)}
    assert {"train/train_summary.json", "train/safety_curve.jsonl", "eval/summary.json",
            "eval/harmful-demo__chat_llama.jsonl"} <= artifacts
    local = client.download_artifacts(run.info.run_id, "eval/summary.json", str(tracked["run"] / "dl"))
    assert json.load(open(local)) == json.load(open(tracked["run"] / "eval" / "summary.json"))


def wandb_records(run_dir) -> list[dict]:
    """Every record of a wandb run directory's .wandb log, read with wandb's own `leet inspect`."""
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


@pytest.mark.slow
def test_wandb_runs_offline_without_a_key_and_keeps_the_metrics(tracked):
    record = tracked["record"]["wandb"]
    assert record["mode"] == "offline" and record["project"] == "safeft-test"
    runs = sorted((tracked["run"] / "wandb").glob(f"offline-run-*-{record['id']}"))
    assert len(runs) == 2  # training, then the evaluation reopened the same run id
    assert not list((tracked["run"] / "wandb").rglob("*.synced"))  # nothing was uploaded
    train = wandb_records(runs[0])
    history = {}
    for r in train:
        if r["type"] == "history":
            history.setdefault(r["history"]["step"].get("num", 0), {}).update(r["history"]["item"])
    losses = [json.loads(line)["loss"] for line in open(tracked["run"] / "logs" / "metrics.jsonl")]
    assert [history[s]["train/loss"] for s in range(1, STEPS + 1)] == pytest.approx(losses)
    for step in range(STEPS + 1):
        assert {"safety/chat-vanilla/harmful_rate", "safety/chat-llama/harmful_rate"} <= set(history[step])
    config = [r for r in train if r["type"] in ("config", "run")]
    assert any('"lr":0.002' in json.dumps(r, separators=(",", ":")) for r in config)
    assert any(r["type"] == "artifact" and r["artifact"]["type"] == "train" for r in train)
    evaluation = wandb_records(runs[1])
    assert any(r["type"] == "artifact" and r["artifact"]["type"] == "eval" for r in evaluation)
    assert any("eval/tracked/harmful-demo/chat-llama/refusal_asr" in r["history"]["item"]
               for r in evaluation if r["type"] == "history")


@pytest.mark.slow
def test_tensorboard_events_read_back(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked["run"] / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    assert [e.step for e in events.Scalars("safety/chat-llama/harmful_rate")] == [0, 1, 2, 3]
    assert events.Scalars("safety/chat-vanilla/harmful_rate")[0].value == 0.0
    assert [e.step for e in events.Scalars("eval/tracked/harmful-demo/chat-llama/refusal_asr")] == [STEPS]
    assert "config/text_summary" in events.Tags()["tensors"]


@pytest.mark.slow
def test_tracker_chatter_stays_off_the_console(tracked):
    console = tracked["stdout"]
    for noise in ("wandb:", "mlflow.store", "alembic", "Creating initial MLflow"):
        assert noise not in console, noise
    log = (tracked["run"] / "logs" / "trackers.log").read_text()
    assert "wandb" in log and "mlflow" in log
