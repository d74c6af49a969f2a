"""Full-parameter fine-tuning with DeepSpeed ZeRO on packed data: `run(cfg, hooks) -> TrainResult`."""

from safeft.train.loop import TrainHooks, TrainResult, run

__all__ = ["run", "TrainHooks", "TrainResult"]
