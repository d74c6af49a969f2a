"""Sharding over 2 Ray actors: identical to one process, and a replica crash resumes to the same output."""

import os

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_two_actors_equal_single_process_and_resume(ray_cluster, sharp_model_dir, tmp_path):
    from test_eval_engine import _cfg, _outputs, _write_gsm

    from safeft.errors import SafeftError
    from safeft.eval import evaluate, shard

    _write_gsm(tmp_path / "gsm.jsonl", n=7)
    single = _cfg(tmp_path, tmp_path / "gsm.jsonl")
    ref = evaluate(single, models=[sharp_model_dir], out_dir=str(tmp_path / "single"))
    sharded = _cfg(tmp_path, tmp_path / "gsm.jsonl", backend="ray", replicas=2)
    shard.FAULT_INJECTION = {"rank": 1, "after_batches": 2}
    try:
        with pytest.raises(SafeftError, match="replica failed"):
            evaluate(sharded, models=[sharp_model_dir], out_dir=str(tmp_path / "ray"))
    finally:
        shard.FAULT_INJECTION = None
    names = {f for _, _, fs in os.walk(tmp_path / "ray") for f in fs}
    assert "shard-00001-of-00002.jsonl" in names and "summary.json" not in names
    out = evaluate(sharded, models=[sharp_model_dir], out_dir=str(tmp_path / "ray"))
    assert _outputs(tmp_path / "single") == _outputs(tmp_path / "ray")
    assert out["metrics"] == ref["metrics"]
    assert "shard-00000-of-00002.jsonl" in {f for _, _, fs in os.walk(tmp_path / "ray") for f in fs}
