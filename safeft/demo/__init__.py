"""The demos: `safeft demo` runs the main job on a real chat model; `safeft demo --demo toy` the mechanics.

    from safeft.demo import run_demo
    run_demo("smollm2")            # SmolLM2-135M-Instruct: aligned base, 7 fine-tuning runs, report (demo.real)
    run_demo("toy", quick=True)       # a tiny model trained from scratch, in minutes: mechanics only (safeft.demo.toy)

Modules, following the data: alignment (the project-written alignment data), real_base / toy_base (the aligned
bases, cached by recipe and code: cache), real / toy (each demo's spec: variants, data, evaluation, claims),
flow (the shared run: base -> data -> base evaluation -> fine-tuning runs -> report), report, console.
"""

from __future__ import annotations

DEMOS = ("smollm2", "toy")


def run_demo(demo: str = "smollm2", out_dir: str = "runs", quick: bool = False,
             extra_overrides: list[str] | None = None, seeds: int = 1, rebuild_base: bool = False,
             model: str | None = None) -> dict:
    from safeft.demo.flow import run_demo as run

    if demo == "toy":
        from safeft.demo.toy import SPEC
    elif demo == "smollm2":
        from safeft.demo.real import SPEC
    else:
        from safeft.errors import SafeftError

        raise SafeftError(f"unknown demo {demo!r}; known: {', '.join(DEMOS)}")
    return run(SPEC, out_dir, quick, extra_overrides, seeds, rebuild_base, model)
