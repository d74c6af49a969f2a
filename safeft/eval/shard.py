"""Sharded, resumable execution of evaluation jobs over replicas: local, launcher ranks, or Ray actors.

A job is one (model, task, template) generation, or one judge pass: prompts as token ids, each with an
index (its position in the task). Replica r of N owns the indices i with i % N == r and appends one
JSON line per finished prompt to `<job dir>/shard-0000r-of-0000N.jsonl`, flushed after every batch.
Each line carries the job fingerprint (model, settings, prompts), so lines from a different setup are
ignored. A restart reads every shard in the job dir (any N), repairs a torn last line and runs only
the indices no line covers; the merge is by index, never by text.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Optional

from safeft.errors import SafeftError

log = logging.getLogger(__name__)

# Tests set {"rank": r, "after_batches": k}: replica r raises after writing k batches (a crash mid-run).
FAULT_INJECTION: Optional[dict] = None
RANK_WAIT_S = 6 * 3600


class InjectedFault(RuntimeError):
    pass


@dataclass
class Job:
    dir: str
    prompts: list[list[int]]
    mode: str = "generate"  # generate | next_token | answer_nll
    max_new: int = 0
    token_ids: list[int] = field(default_factory=list)  # next_token: report these tokens' probabilities
    labels: list[list[int]] = field(default_factory=list)  # answer_nll: per prompt, -100 where no loss
    fingerprint: str = ""

    def __post_init__(self):
        if not self.fingerprint:
            raise ValueError("a Job needs a fingerprint")


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shard_path(job_dir: str, rank: int, world: int) -> str:
    return os.path.join(job_dir, f"shard-{rank:05d}-of-{world:05d}.jsonl")


def read_done(job: Job) -> dict[int, dict]:
    """Index -> line over every shard file of the job dir; torn or foreign lines are skipped."""
    done: dict[int, dict] = {}
    for path in sorted(glob.glob(os.path.join(job.dir, "shard-*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # the torn last line of a crashed writer
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if row.get("fp") == job.fingerprint and 0 <= row.get("index", -1) < len(job.prompts):
                    done.setdefault(row["index"], row)
    return done


def _repair_tail(path: str) -> None:
    """Drop a partial last line so the next append starts on a fresh line."""
    if not os.path.isfile(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def run_replica(model_path: str, settings, jobs: list[Job], rank: int, world: int,
                fault: Optional[dict] = None) -> dict:
    """Run this replica's missing indices of every job; returns {"prompts", "tokens", "seconds"}."""
    from safeft.eval.generate import Engine, Throughput

    todo = []
    for job in jobs:
        done = read_done(job)
        missing = [i for i in range(len(job.prompts)) if i % world == rank and i not in done]
        if missing:
            todo.append((job, missing))
    stats = {"prompts": 0, "tokens": 0, "seconds": 0.0}
    if not todo:
        return stats
    t0 = time.perf_counter()
    engine = Engine(model_path, settings)
    bar = Throughput(sum(len(m) for _, m in todo), f"replica {rank}/{world}", position=rank)
    batches = 0
    for job, missing in todo:
        os.makedirs(job.dir, exist_ok=True)
        path = shard_path(job.dir, rank, world)
        _repair_tail(path)
        with open(path, "a", encoding="utf-8") as f:
            def write(positions: list[int], results: list[dict]) -> None:
                nonlocal batches
                for pos, res in zip(positions, results):
                    f.write(json.dumps({"index": missing[pos], "fp": job.fingerprint, **res}) + "\n")
                f.flush()
                os.fsync(f.fileno())
                n_tok = sum(len(r.get("tokens", ())) for r in results)
                stats["prompts"] += len(results)
                stats["tokens"] += n_tok
                bar.update(len(results), n_tok)
                batches += 1
                if fault and fault.get("rank") == rank and batches >= fault.get("after_batches", 1):
                    raise InjectedFault(f"injected fault in replica {rank} after {batches} batches")

            prompts = [job.prompts[i] for i in missing]
            if job.mode == "generate":
                engine.generate(prompts, job.max_new, on_batch=write)
            elif job.mode == "answer_nll":
                engine.answer_nll(prompts, [job.labels[i] for i in missing], on_batch=write)
            else:
                engine.next_token_probs(prompts, job.token_ids, on_batch=write)
    bar.close()
    stats["seconds"] = time.perf_counter() - t0
    return stats


class ReplicaActor:
    """A Ray actor holding one model replica (its GPUs come from the actor's num_gpus)."""

    def run(self, model_path, settings, jobs, rank, world, fault=None):
        return run_replica(model_path, settings, jobs, rank, world, fault)


def actor_options(gpus_per_replica: int, cluster_gpus: float) -> dict:
    """Ray options for one replica actor: its GPUs are reserved in Ray's accounting whenever the cluster has any."""
    if cluster_gpus and gpus_per_replica > cluster_gpus:
        raise SafeftError(f"config key 'eval.gpus_per_replica': {gpus_per_replica} GPUs per replica, but the Ray "
                          f"cluster has {cluster_gpus:g}")
    return {"num_cpus": 1, "num_gpus": gpus_per_replica if cluster_gpus else 0, "max_restarts": 0}


def run_ray(model_path: str, settings, jobs: list[Job], replicas: int, gpus_per_replica: int,
            address: Optional[str] = None) -> list[dict]:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    options = actor_options(gpus_per_replica, ray.cluster_resources().get("GPU", 0))
    actor_cls = ray.remote(ReplicaActor).options(**options)
    actors = [actor_cls.remote() for _ in range(replicas)]
    jobs_ref = ray.put(jobs)
    try:
        refs = [a.run.remote(model_path, settings, jobs_ref, r, replicas, FAULT_INJECTION)
                for r, a in enumerate(actors)]
        return ray.get(refs)
    except ray.exceptions.RayError as e:
        raise SafeftError(f"evaluation replica failed ({type(e).__name__}); rerun to resume: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from e
    finally:
        for a in actors:
            ray.kill(a)


def launcher_rank() -> tuple[int, int]:
    """(rank, world) from torchrun/deepspeed-style environment variables; (0, 1) when unset."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def wait_complete(jobs: list[Job], timeout_s: float = RANK_WAIT_S, poll_s: float = 2.0) -> None:
    """Block until every index of every job has a shard line (other launcher ranks still running)."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = sum(len(j.prompts) - len(read_done(j)) for j in jobs)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise SafeftError(f"gave up waiting for other ranks: {missing} prompts still missing; rerun to resume")
        time.sleep(poll_s)


def _ray_cluster_gpus() -> float:
    """GPUs of the Ray cluster this process is already connected to (a sweep task, a job driver); 0 if none."""
    try:
        import ray
    except ImportError:
        return 0
    return ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0


def dispatch(backend: str, replicas: int, world: int, use_gpu: bool, cluster_gpus: float) -> str:
    """ray | ranks | local. A run that uses GPUs evaluates in Ray actors even with one replica, so the
    replica's GPUs are reserved in Ray's accounting rather than shared with training beside it."""
    if backend == "ray":
        return "ray"
    if world > 1:
        return "ranks"
    if backend == "auto" and (replicas > 1 or use_gpu or cluster_gpus > 0):
        return "ray"
    return "local"


def run_jobs(model_path: str, settings, jobs: list[Job], backend: str, replicas: int,
             gpus_per_replica: int = 1, address: Optional[str] = None, use_gpu: bool = False) -> dict:
    """Dispatch to Ray actors, launcher ranks or one local process; all replicas' jobs end complete."""
    rank, world = launcher_rank()
    where = dispatch(backend, replicas, world, use_gpu, _ray_cluster_gpus() if backend == "auto" else 0)
    if where == "ray":
        stats = run_ray(model_path, settings, jobs, replicas, gpus_per_replica, address)
    elif where == "ranks":
        stats = [run_replica(model_path, settings, jobs, rank, world, FAULT_INJECTION)]
        wait_complete(jobs)
    else:
        stats = [run_replica(model_path, settings, jobs, 0, 1, FAULT_INJECTION)]
    return {"prompts": sum(s["prompts"] for s in stats), "tokens": sum(s["tokens"] for s in stats),
            "replica_seconds": [round(s["seconds"], 3) for s in stats]}


def merge(job: Job) -> list[dict]:
    """The job's lines in index order; every index exactly once."""
    done = read_done(job)
    missing = [i for i in range(len(job.prompts)) if i not in done]
    if missing:
        raise SafeftError(f"{job.dir}: {len(missing)} prompts have no output (first: index {missing[0]}); "
                          "rerun the evaluation to resume")
    return [done[i] for i in range(len(job.prompts))]
