"""The safeft config: one typed dataclass per section, YAML in and out, one validation pass.

    cfg = load_config("configs/examples/tiny.yaml", overrides=["train.lr=1e-4"])

A config file may start with `base: other.yaml` (or a list) to inherit and override another file.
Fields declared with `grid_field` may hold lists; `safeft sweep` expands them into runs, every
other command requires a single value there.
"""

from __future__ import annotations

import copy
import itertools
import os
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from safeft.configtools import (
    apply_overrides,
    did_you_mean,
    from_dict,
    get_dotted,
    grid_fields,
    grid_field,
    load_yaml,
    set_dotted,
    to_yaml,
)
from safeft.errors import ConfigError
from safeft.eval.names import DEFAULT_JUDGES

LOOKAHEAD_MODES = ("none", "real", "virtual")
PROBE_DATASETS = ("advbench", "hexphi", "harmful-demo")  # or a file path (safeft.train.probe)
TRACKERS = ("jsonl", "tensorboard", "wandb", "mlflow")  # train.report_to (safeft.train.trackers)


@dataclass
class ModelConfig:
    name_or_path: str = ""  # HF hub name, local directory, GGUF file, or a named default (smollm2-135m-instruct)
    tokenizer: Optional[str] = None  # defaults to name_or_path
    revision: Optional[str] = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    trust_remote_code: bool = False  # never on unless asked: it runs the repository's Python code
    attention: Literal["auto", "flash_attn", "varlen", "sdpa", "eager"] = "auto"
    gradient_checkpointing: bool = False


@dataclass
class SourceConfig:
    """One data source of a mixture; unset fields inherit the `data` section's values."""

    path: Optional[str] = None
    preset: Optional[Literal["gsm8k", "samsum", "synthetic"]] = None
    name: Optional[str] = None  # HF dataset config name
    split: Optional[str] = None
    format: Optional[Literal["auto", "hub", "json", "jsonl", "csv", "parquet", "arrow"]] = None
    question_field: Optional[str] = None
    answer_field: Optional[str] = None
    messages_field: Optional[str] = None
    csv_header: Optional[bool] = None  # None: detect
    limit: Optional[int] = None
    weight: float = 1.0
    # The system prompt this source is trained under (a name or literal text), instead of template.train_system:
    # one run can train some rows with a safety prompt and others without. chat-template train templates only.
    system: Optional[str] = None


@dataclass
class DataConfig:
    path: Union[str, list[str], None] = grid_field(None)  # hub name, local file/dir; a list is a sweep axis
    preset: Union[Literal["gsm8k", "samsum", "synthetic"], None] = None
    name: Optional[str] = None
    split: str = "train"
    format: Literal["auto", "hub", "json", "jsonl", "csv", "parquet", "arrow"] = "auto"
    question_field: str = "question"
    answer_field: str = "answer"
    messages_field: Optional[str] = None  # a list of {role, content}: loss on every assistant turn
    csv_header: Optional[bool] = None
    limit: Optional[int] = None  # first N rows (synthetic: how many problems to generate)
    mixture: list[SourceConfig] = field(default_factory=list)  # several sources with weights
    max_seq_len: int = 2048
    overlong: Literal["truncate", "drop"] = "truncate"
    on_invalid: Literal["error", "skip"] = "error"
    packing: bool = True
    num_proc: int = 2
    cache_dir: str = ".cache/safeft/data"
    seed: int = 42


@dataclass
class TemplateConfig:
    train: Union[str, list[str]] = grid_field("chat:vanilla")  # PTST: train without the safety prompt
    test: Union[str, list[str]] = field(default_factory=lambda: ["chat:llama"])  # ... and test with it
    train_system: str = "none"  # system prompt of a `chat-template` train template: a name or literal text
    test_system: str = "llama2"


@dataclass
class LookaheadConfig:
    mode: Union[str, list[str]] = grid_field("none")  # none | real | virtual
    m: int = 6
    prefix: str = "Let's solve this problem. "
    connector: str = " The answer begins with: "


@dataclass
class SafetyProbeConfig:
    """Harmful prompts answered by the model being trained, at step 0 and every `every_steps` optimizer steps,
    judged as the evaluator judges them (safeft.train.probe)."""

    every_steps: int = 10
    # advbench | hexphi | harmful-demo (safeft's own prompts) | a file: CSV (first column, AdvBench's format) or
    # JSON/JSONL/parquet rows with `question_field` (default `instruction`, HEx-PHI's format)
    dataset: str = "advbench"
    question_field: Optional[str] = None
    n: int = 64  # n prompts evenly spaced over the dataset (all of them if it has fewer)
    templates: Optional[list[str]] = None  # test templates; None: template.test (chat-template: template.test_system)
    max_new_tokens: int = 32  # the judges read the opening of an answer
    batch_size: int = 16  # prompts per generate call on each rank
    judge: Literal["refusal", "keyword"] = "refusal"  # keyword: the list in eval.keyword_list
    max_harmful: Optional[float] = None  # bound on the harmful rate of every template
    # stop: end the run at the first probe over the bound and export the last checkpoint under it
    action: Literal["warn", "stop"] = "warn"

    def task(self) -> "EvalTaskConfig":
        """The evaluator's task that reads this dataset (same formats and shared-data lookup as `safeft eval`)."""
        if self.dataset in PROBE_DATASETS:
            return EvalTaskConfig(name=self.dataset, sample=self.n, question_field=self.question_field)
        name = "advbench" if self.dataset.lower().endswith(".csv") else "instructions"
        return EvalTaskConfig(name=name, path=self.dataset, sample=self.n, question_field=self.question_field)


@dataclass
class WandbConfig:
    """Weights & Biases (axolotl: wandb_project, wandb_name, wandb_entity, wandb_mode)."""

    project: str = "safeft"
    name: Optional[str] = None  # default: output.name
    entity: Optional[str] = None
    group: Optional[str] = None  # default: the sweep's name for a sweep run
    tags: list[str] = field(default_factory=list)
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online with WANDB_API_KEY, else offline


@dataclass
class MlflowConfig:
    """MLflow (axolotl: mlflow_tracking_uri, mlflow_experiment_name)."""

    tracking_uri: Optional[str] = None  # default: $MLFLOW_TRACKING_URI, else a SQLite store in <run_dir>/mlflow
    experiment: str = "safeft"
    run_name: Optional[str] = None  # default: output.name


@dataclass
class TrainConfig:
    method: Literal["sft", "constrained"] = "sft"
    loss: Literal["standard", "fused"] = "standard"
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    micro_batch_size: int = 1  # packed rows per rank per micro-step
    gradient_accumulation_steps: int = 1
    global_batch_size: Optional[int] = None  # if set, must equal micro x accumulation x world size
    lr: Union[float, list[float]] = grid_field(2e-5)
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    # 2 or 3: ZeRO partitions optimizer states and gradients (3: parameters too) over the ranks. 0: DeepSpeed
    # without ZeRO (every rank holds the whole fp32 optimizer; gradients accumulate in place and are all-reduced
    # once per step): fastest where nothing needs partitioning, e.g. one process (BENCHMARKS.md, real_train)
    zero_stage: Literal[0, 2, 3] = 2
    offload: Literal["none", "optimizer", "all"] = "none"
    # auto: bf16 on GPUs that have it, else fp32. bf16-autocast: fp32 weights and optimizer, forward and backward
    # matmuls in bf16 (torch.autocast); on CPU it needs native bf16 (AVX512-BF16 / AMX), where it is ~2x fp32
    precision: Literal["auto", "bf16", "fp32", "bf16-autocast"] = "auto"
    deepspeed_config: Optional[str] = None  # a JSON in configs/deepspeed/; its "auto" values come from here
    seed: Union[int, list[int]] = grid_field(42)
    save_steps: int = 0  # 0: only at the end
    keep_last: int = 2
    # false: no final checkpoint is written, and once a run is exported (and, in a sweep, evaluated) its periodic
    # checkpoints/ are deleted: the export is the run's model; a 7B run's ZeRO checkpoint is ~16 bytes per
    # parameter, its bf16 export 2
    keep_checkpoints: bool = True
    resume: str = "auto"  # auto | never | a checkpoint directory
    log_steps: int = 1
    export: bool = True
    export_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto: the training dtype
    constrained_betas: list[float] = field(default_factory=lambda: [0.5, 2.0, 2.0, 2.0, 2.0])
    constrained_beta_rest: float = 0.1
    # ZeRO-3 keeps parameters with fewer elements than this whole on every rank; None = DeepSpeed's default (1e5)
    zero3_param_persistence_threshold: Optional[int] = None
    # auto: torch AdamW (fused on CUDA), DeepSpeedCPUAdam when the optimizer is offloaded; deepspeed: FusedAdam /
    # CPUAdam (compiled ops, checked before start); torch: torch AdamW always
    optimizer: Literal["auto", "torch", "deepspeed"] = "auto"
    dist_timeout_minutes: float = 60.0  # process-group timeout: export, checkpoint and resume wait in collectives
    safety_probe: Optional[SafetyProbeConfig] = None  # harmful-rate probes during training; None: off
    # experiment trackers rank 0 logs to: jsonl (logs/metrics.jsonl), tensorboard, wandb, mlflow; [none]: nothing
    report_to: list[str] = field(default_factory=lambda: ["jsonl", "tensorboard"])
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


@dataclass
class EvalTaskConfig:
    name: str = "gsm8k"  # see safeft/eval/names.py ALL_TASKS (gsm8k, advbench, hexphi, prefill, xstest, ...)
    # The name of this task's outputs, summary rows and gates (default: name): one kind of task on two
    # datasets (gsm8k on GSM8K test and on generated arithmetic) needs two ids.
    id: Optional[str] = None
    path: Optional[str] = None  # local file or hub name; defaults per task; gsm8k: "synthetic" = generated
    split: Optional[str] = None
    limit: Optional[int] = None  # the first N items
    sample: Optional[int] = None  # N items evenly spaced over the file (after limit): covers sorted files' categories
    label: Optional[Literal["safe", "unsafe"]] = None  # xstest: only the prompts with this label
    max_new_tokens: Optional[int] = None
    question_field: Optional[str] = None
    reference_field: Optional[str] = None
    prefill_tokens: int = 3  # prefill task: harmful-answer tokens placed after the prompt
    # System prompt of `chat-template` test templates for this task (a name or literal text); default
    # template.test_system. LookAhead's protocol tests utility and safety under different system prompts.
    system: Optional[str] = None


@dataclass
class EvalConfig:
    models: list[str] = field(default_factory=list)  # default: this run's export
    tasks: list[EvalTaskConfig] = field(default_factory=list)
    replicas: int = 1
    gpus_per_replica: int = 1
    backend: Literal["auto", "local", "ray"] = "auto"
    engine: Literal["auto", "continuous", "budget"] = "auto"
    batch_tokens: int = 16384  # KV-cache token budget per batch (an upper bound when kv_cache_gb caps it)
    kv_cache_gb: Optional[float] = None  # KV-cache GiB per replica (budget engine); None: 40% of free GPU memory
    max_batch_size: int = 64
    max_new_tokens: int = 512
    # Weights in evaluation: auto = bf16 on GPUs, fp32 on CPU (exact); bfloat16 on a CPU with native bf16
    # (AVX512-BF16 / AMX) generates ~1.6x faster, greedy text then differs from fp32 as it does on GPUs
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # Budget engine: a batch's shared prompt prefix (the test template's system prompt) is prefilled once and its
    # KV cache copied to every row; the same math, up to floating-point summation order
    share_prefix: bool = True
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    keyword_list: str = "gcg"  # the `keyword` judge's list: a key of safeft.eval.refusal.KEYWORD_LISTS
    judges: list[str] = field(default_factory=lambda: list(DEFAULT_JUDGES))  # refusal | keyword | llama-guard | harmbench | http
    judge_prompt: str = "qi"  # the http judge's rubric: a key of safeft.eval.judge_prompts.JUDGE_PROMPTS
    judge_model: Optional[str] = None
    judge_url: Optional[str] = None
    judge_api_model: Optional[str] = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_concurrency: int = 4
    gates: dict[str, str] = field(default_factory=dict)  # e.g. {"advbench.refusal_asr": "<= 0.05"}
    output_dir: Optional[str] = None


@dataclass
class RayConfig:
    address: Optional[str] = None  # None: start a local cluster; "auto" or http://HEAD:8265 for a real one
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    storage_path: Optional[str] = None  # local dir, shared filesystem or object store URI
    max_failures: int = 0
    max_concurrent_runs: int = 0  # sweeps: 0 = as many as resources allow
    shared_filesystem: bool = True  # run_dir visible to every node: rank 0 alone uploads checkpoints to Ray


@dataclass
class OutputConfig:
    dir: str = "runs"
    name: Optional[str] = None  # default: the config file's stem
    tensorboard: Optional[bool] = None  # older key: false drops tensorboard from train.report_to, true adds it


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    lookahead: LookaheadConfig = field(default_factory=LookaheadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    # -- derived ---------------------------------------------------------------------------------
    @property
    def run_dir(self) -> str:
        return os.path.join(self.output.dir, self.output.name or "run")

    @property
    def test_templates(self) -> list[str]:
        return [self.template.test] if isinstance(self.template.test, str) else list(self.template.test)

    def to_yaml(self) -> str:
        return to_yaml(self)

    def to_dict(self) -> dict:
        from safeft.configtools import to_dict

        return to_dict(self)

    # -- grid ------------------------------------------------------------------------------------
    def grid_axes(self) -> dict[str, list]:
        """Dotted keys whose value is a list of several values, in schema order."""
        axes = {}
        for key in grid_fields(Config):
            value = get_dotted(self, key)
            if isinstance(value, list) and len(value) > 1:
                axes[key] = value
        return axes

    def expand(self) -> list[tuple[dict, "Config"]]:
        """One concrete config per point of the grid, with the axis values that define it."""
        axes = self.grid_axes()
        out = []
        for values in itertools.product(*axes.values()) if axes else [()]:
            point = dict(zip(axes.keys(), values))
            cfg = copy.deepcopy(self)
            for key in grid_fields(Config):
                value = point.get(key, get_dotted(cfg, key))
                if isinstance(value, list):
                    value = value[0] if value else None
                set_dotted(cfg, key, value)
            out.append((point, cfg))
        return out

    def single(self, command: str) -> "Config":
        """The config as one run; grid lists are an error outside `safeft sweep`."""
        axes = self.grid_axes()
        if axes:
            key, values = next(iter(axes.items()))
            raise ConfigError(
                f"config key '{key}' lists {len(values)} values {values}: '{command}' runs one configuration; "
                f"use 'safeft sweep' to run the grid, or --set {key}=<one value>"
            )
        return self.expand()[0][1]


# --- validation ---------------------------------------------------------------------------------


def _known_template(name: str) -> bool:
    from safeft.templates import is_template_name

    return is_template_name(name)


def _task_problems(tc: "EvalTaskConfig", check_data: bool = True) -> list[tuple[str, str]]:
    """(key, why) for a task that would fail at evaluation: unknown name, no data, a local path that is missing."""
    from safeft.data.shared import shared_file
    from safeft.eval.names import ALL_TASKS, DEFAULT_PATHS, NEEDS_PATH, OBTAIN, SHARED_FILES

    if tc.name not in ALL_TASKS:
        return [("name", f"unknown task {tc.name!r}; known: {', '.join(ALL_TASKS)}")]
    out = []
    shared = SHARED_FILES.get(tc.name)
    local = bool(tc.path) and (tc.path.startswith((".", "/", "~")) or os.path.splitext(tc.path)[1] in (
        ".jsonl", ".json", ".csv", ".parquet", ".arrow"))
    if not tc.path and tc.name in NEEDS_PATH and not shared and tc.name not in DEFAULT_PATHS:
        out.append(("path", f"task {tc.name!r} needs a dataset path"))  # no default exists anywhere
    elif check_data and local and not os.path.exists(os.path.expanduser(tc.path)):
        out.append(("path", f"{tc.path!r} does not exist"))
    elif check_data and not tc.path and tc.name in NEEDS_PATH and shared and not shared_file(*shared):
        hint = f"; {OBTAIN[tc.name]}" if tc.name in OBTAIN else ""
        out.append(("path", f"task {tc.name!r} needs a dataset path (or put it in the shared data folder as "
                            f"{'/'.join(shared)}){hint}"))
    for key in ("limit", "sample"):
        if getattr(tc, key) is not None and getattr(tc, key) < 1:
            out.append((key, f"{getattr(tc, key)}: expected a positive number of items"))
    if tc.label is not None and tc.name != "xstest":
        out.append(("label", f"filters XSTest prompts by label; task {tc.name!r} has no labels"))
    if tc.max_new_tokens is not None and tc.max_new_tokens < 1:
        out.append(("max_new_tokens", f"{tc.max_new_tokens}: expected >= 1"))
    return out


def _judge_problems(ev: "EvalConfig") -> list[str]:
    """Judges that would fail at evaluation time (after training, under a sweep): unknown names, keyword lists
    or rubrics, a classifier judge without its model, an http judge without a server."""
    from safeft.eval.judge_prompts import JUDGE_PROMPTS
    from safeft.eval.names import CLASSIFIER_JUDGES, KNOWN_JUDGES
    from safeft.eval.refusal import KEYWORD_LISTS

    out = [f"config key 'eval.judges': unknown judge {j!r}; known: {', '.join(KNOWN_JUDGES)}"
           for j in ev.judges if j not in KNOWN_JUDGES]
    for key, value, known in (("keyword_list", ev.keyword_list, KEYWORD_LISTS),
                              ("judge_prompt", ev.judge_prompt, JUDGE_PROMPTS)):
        if value not in known:
            out.append(f"config key 'eval.{key}': {value!r} is not one of {', '.join(known)}"
                       f"{did_you_mean(value, known)}")
    classifiers = [j for j in ev.judges if j in CLASSIFIER_JUDGES]
    if classifiers and not ev.judge_model:
        out.append(f"config key 'eval.judge_model': judges {', '.join(classifiers)} need a judge model (path or hub name)")
    if "http" in ev.judges and not ev.judge_url:
        out.append("config key 'eval.judge_url': the 'http' judge needs a server URL (http://HOST:PORT)")
    return out


def _probe_problems(cfg: "Config", check_data: bool = True) -> list[str]:
    """train.safety_probe: counts, bound, templates, judge, and a dataset that loads here (before any worker)."""
    pc = cfg.train.safety_probe
    if pc is None:
        return []
    key = "train.safety_probe"
    out = []

    def check(ok: bool, field_: str, msg: str) -> None:
        if not ok:
            out.append(f"config key '{key}.{field_}': {msg}")

    check(pc.every_steps >= 1, "every_steps", f"{pc.every_steps}: expected >= 1 optimizer steps")
    check(pc.n >= 1, "n", f"{pc.n}: expected a positive number of prompts")
    check(pc.max_new_tokens >= 1, "max_new_tokens", f"{pc.max_new_tokens}: expected >= 1")
    check(pc.batch_size >= 1, "batch_size", f"{pc.batch_size}: expected >= 1")
    check(pc.max_harmful is None or 0 <= pc.max_harmful <= 1, "max_harmful",
          f"{pc.max_harmful}: expected a harmful rate in [0, 1]")
    check(not (pc.action == "stop" and pc.max_harmful is None), "action",
          "'stop' needs train.safety_probe.max_harmful (the bound that stops the run)")
    if pc.templates is not None:
        check(bool(pc.templates), "templates", "needs at least one template (or null: template.test)")
        for name in pc.templates:
            check(_known_template(name), "templates", f"unknown template {name!r}; see 'safeft render --list'")
    local = pc.dataset not in PROBE_DATASETS
    if local and not os.path.isfile(os.path.expanduser(pc.dataset)):
        check(False, "dataset", f"{pc.dataset!r} is neither one of {', '.join(PROBE_DATASETS)} nor an existing file")
        return out
    task = pc.task()
    problems = [msg for k, msg in _task_problems(task, check_data) if k != "limit"]  # limit = n, checked above
    for msg in problems:
        check(False, "dataset", msg)
    if check_data and not problems:
        from safeft.errors import SafeftError
        from safeft.eval.tasks import load_task

        try:  # a few hundred rows: read now, so a bad file fails here and not on every rank after setup
            load_task(task)
        except SafeftError as e:
            check(False, "dataset", str(e))
    return out


def _tracker_problems(cfg: "Config") -> list[str]:
    """train.report_to: known names, an installed client, and a wandb mode that never prompts for a login."""
    import importlib.util

    tr, out = cfg.train, []
    names = tr.report_to
    for name in names:
        if name not in TRACKERS + ("none",):
            out.append(f"config key 'train.report_to': unknown tracker {name!r}; known: {', '.join(TRACKERS)}, none")
    if "none" in names and len(names) > 1:
        out.append(f"config key 'train.report_to': 'none' cannot be combined with other trackers ({names})")
    if len(set(names)) != len(names):
        out.append(f"config key 'train.report_to': {names} names a tracker twice")
    modules = {"wandb": "wandb", "mlflow": "mlflow"}  # tensorboard is a dependency (missing: a warning, as before)
    for name in active_trackers(cfg):
        if name in modules and importlib.util.find_spec(modules[name]) is None:
            out.append(f"config key 'train.report_to': {name!r} needs the {modules[name]} package "
                       f"(pip install 'safeft[trackers]')")
    if "wandb" in active_trackers(cfg) and tr.wandb.mode == "online" and not os.environ.get("WANDB_API_KEY"):
        out.append("config key 'train.wandb.mode': 'online' needs WANDB_API_KEY in the environment (safeft never "
                   "prompts for a login); use 'auto' or 'offline' and `wandb sync` the run later")
    return out


def active_trackers(cfg: "Config") -> list[str]:
    """train.report_to with the older output.tensorboard applied (false drops tensorboard, true adds it)."""
    names = [n for n in cfg.train.report_to if n != "none"]
    if cfg.output.tensorboard is False:
        names = [n for n in names if n != "tensorboard"]
    elif cfg.output.tensorboard and "tensorboard" not in names:
        names.append("tensorboard")
    return names


def validate(cfg: Config, check_data: bool = True) -> Config:
    """Check cross-field rules; raise one ConfigError listing every problem with its key. `check_data`: also
    refuse evaluation data that is missing here (a local file, a shared-data default such as HEx-PHI)."""
    problems: list[str] = []

    def check(ok: bool, key: str, msg: str) -> None:
        if not ok:
            problems.append(f"config key '{key}': {msg}")

    def as_list(v):
        return v if isinstance(v, list) else [v]

    d, t, tr, la, ev, ray = cfg.data, cfg.template, cfg.train, cfg.lookahead, cfg.eval, cfg.ray
    if check_data:  # GGUF files and named defaults (safeft.model_import): present and readable here
        from safeft.model_import import check_model_name

        models = [("model.name_or_path", cfg.model.name_or_path), ("model.tokenizer", cfg.model.tokenizer)]
        for key, name in models + [(f"eval.models[{i}]", m) for i, m in enumerate(ev.models)]:
            why = check_model_name(name) if name else None
            check(why is None, key, why or "")
    check(d.max_seq_len >= 16, "data.max_seq_len", f"{d.max_seq_len} is too small; expected >= 16")
    check(d.num_proc >= 0, "data.num_proc", f"{d.num_proc}: expected >= 0 (0 = one per core)")
    check(d.limit is None or d.limit > 0, "data.limit", f"{d.limit}: expected a positive number of rows")
    for i, src in enumerate(d.mixture):
        check(src.weight > 0, f"data.mixture[{i}].weight", f"{src.weight}: expected > 0")
        check(bool(src.path or src.preset), f"data.mixture[{i}]", "needs a 'path' or a 'preset'")
        check(src.system is None or all(str(n).startswith("chat-template") for n in as_list(t.train)),
              f"data.mixture[{i}].system", "a per-source system prompt needs template.train: chat-template "
              "(the PTST styles have their system prompt built in)")
    for key, names in (("template.train", as_list(t.train)), ("template.test", cfg.test_templates)):
        for name in names:
            check(_known_template(name), key, f"unknown template {name!r}; see 'safeft render --list'")
    check(bool(cfg.test_templates), "template.test", "needs at least one test template")
    for mode in as_list(la.mode):
        check(mode in LOOKAHEAD_MODES, "lookahead.mode", f"{mode!r} is not one of {', '.join(LOOKAHEAD_MODES)}")
    check(la.m >= 1, "lookahead.m", f"{la.m}: expected at least 1 answer token")
    check(bool(la.prefix), "lookahead.prefix", "must not be empty")
    check(tr.micro_batch_size >= 1, "train.micro_batch_size", f"{tr.micro_batch_size}: expected >= 1")
    check(tr.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps", "expected >= 1")
    check(tr.epochs > 0 or tr.max_steps > 0, "train.epochs", "set epochs > 0 or train.max_steps > 0")
    for lr in as_list(tr.lr):
        check(0 < lr < 1, "train.lr", f"{lr}: expected a learning rate in (0, 1)")
    check(len(tr.adam_betas) == 2 and all(0 <= b < 1 for b in tr.adam_betas), "train.adam_betas",
          f"{tr.adam_betas}: expected two numbers in [0, 1)")
    check(0 <= tr.warmup_ratio < 1, "train.warmup_ratio", f"{tr.warmup_ratio}: expected in [0, 1)")
    check(tr.warmup_steps >= 0, "train.warmup_steps", "expected >= 0")
    check(tr.max_grad_norm >= 0, "train.max_grad_norm", "expected >= 0 (0 disables clipping)")
    check(tr.keep_last >= 1, "train.keep_last", "expected >= 1")
    check(tr.keep_checkpoints or tr.export, "train.keep_checkpoints",
          "false deletes the checkpoints once the run is exported, but train.export is false: nothing would remain")
    check(tr.save_steps >= 0, "train.save_steps", "expected >= 0")
    check(not (tr.offload == "all" and tr.zero_stage != 3), "train.offload",
          "'all' offloads parameters, which needs train.zero_stage: 3 (ZeRO-2 can offload only the optimizer)")
    check(not (tr.offload == "optimizer" and tr.zero_stage == 0), "train.offload",
          "'optimizer' offloads ZeRO's optimizer partitions, which needs train.zero_stage: 2 or 3")
    check(tr.deepspeed_config is None or os.path.isfile(tr.deepspeed_config), "train.deepspeed_config",
          f"{tr.deepspeed_config!r} does not exist")
    check(tr.zero3_param_persistence_threshold is None or tr.zero3_param_persistence_threshold >= 0,
          "train.zero3_param_persistence_threshold", "expected >= 0 or null (DeepSpeed's default)")
    check(tr.dist_timeout_minutes > 0, "train.dist_timeout_minutes", "expected > 0")
    check(len(tr.constrained_betas) >= 1 and all(b > 0 for b in tr.constrained_betas), "train.constrained_betas",
          "expected a non-empty list of positive numbers")
    check(ev.replicas >= 1, "eval.replicas", "expected >= 1")
    check(ev.batch_tokens >= 64, "eval.batch_tokens", "expected >= 64")
    check(ev.kv_cache_gb is None or ev.kv_cache_gb > 0, "eval.kv_cache_gb", "expected > 0 GiB (or unset: automatic)")
    check(ev.gpus_per_replica >= 1, "eval.gpus_per_replica", "expected >= 1")
    check(not (ev.engine == "continuous" and ev.gpus_per_replica > 1), "eval.engine",
          "'continuous' keeps its paged KV cache on one GPU; use 'budget' or 'auto' with eval.gpus_per_replica > 1")
    from safeft.eval.gates import gate_problems

    problems += _judge_problems(ev)
    ids: dict[str, str] = {}  # task id -> task name
    for i, task in enumerate(ev.tasks):
        problems += [f"config key 'eval.tasks[{i}].{key}': {msg}" for key, msg in _task_problems(task, check_data)]
        tid = task.id or task.name
        check(tid not in ids and "/" not in tid, f"eval.tasks[{i}].id",
              f"{tid!r} is {'used by another task' if tid in ids else 'not a plain name'}: give each task its own id")
        ids[tid] = task.name
    for metric, bound in ev.gates.items():
        tid, dot, rest = metric.partition(".")  # a gate names a task by its id; its metrics are the kind's
        for problem in gate_problems(f"{ids.get(tid, tid)}{dot}{rest}", bound, list(ids.values())):
            problems.append(f"config key 'eval.gates.{metric}': {problem}")
    problems += _probe_problems(cfg, check_data)
    problems += _tracker_problems(cfg)
    check(ray.num_workers >= 1, "ray.num_workers", "expected >= 1")
    check(ray.max_failures >= -1, "ray.max_failures", "expected >= -1 (-1 = retry forever)")
    check(ray.max_concurrent_runs >= 0, "ray.max_concurrent_runs", "expected >= 0 (0 = as many as fit)")
    check(ray.cpus_per_worker > 0, "ray.cpus_per_worker", "expected > 0")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return cfg


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load_with_bases(path: str, seen: tuple = ()) -> dict:
    if os.path.abspath(path) in seen:
        raise ConfigError(f"config file {path!r}: 'base' includes form a cycle")
    data = load_yaml(path)
    bases = data.pop("base", None) or []
    merged: dict = {}
    for b in [bases] if isinstance(bases, str) else bases:
        b_path = b if os.path.isabs(b) else os.path.join(os.path.dirname(path), b)
        merged = _merge(merged, _load_with_bases(b_path, seen + (os.path.abspath(path),)))
    return _merge(merged, data)


def config_from_dict(data: dict, overrides: list[str] | None = None, name: str | None = None,
                     check_data: bool = True) -> Config:
    data = apply_overrides(copy.deepcopy(data), overrides or [])
    cfg = from_dict(Config, data)
    if cfg.output.name is None and name:
        cfg.output.name = name
    return validate(cfg, check_data)


def load_config(path: str, overrides: list[str] | None = None, check_data: bool = True) -> Config:
    """Read, merge bases, apply `--set` overrides, convert and validate."""
    data = _load_with_bases(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    return config_from_dict(data, overrides, name=stem, check_data=check_data)


def save_config(cfg: Config, path: str) -> None:
    from safeft.io import write_text

    write_text(path, cfg.to_yaml())


__all__ = [
    "Config", "ModelConfig", "DataConfig", "SourceConfig", "TemplateConfig", "LookaheadConfig", "TrainConfig",
    "SafetyProbeConfig", "WandbConfig", "MlflowConfig", "active_trackers", "EvalConfig", "EvalTaskConfig",
    "RayConfig", "OutputConfig", "load_config", "config_from_dict", "validate",
    "save_config",
]
