#!/usr/bin/env bash
# Gather the wheels `make gpu-check` needs on a GPU machine that has only torch, transformers and triton
# (plus their usual companions: numpy, pyarrow, ninja, psutil, py-cpuinfo, msgpack, huggingface-hub,
# pytest) and reaches no package registry. Run here, on a machine with network and the project's
# environment (building DeepSpeed's pure-Python wheel needs torch installed; the CPU build is fine):
#
#   bench/gpu_wheels.sh                 # into .whl/ at the project root (git-ignored locally)
#   bench/gpu_wheels.sh extra==1.2 ...  # more pins
#   NO_LIGER=1 bench/gpu_wheels.sh      # without the optional liger-kernel baseline
#
# Take .whl/ along (with the device tool: carry [".whl"]); bench/gpu_check.py installs it offline
# into a scratch directory first. About 8 MB: DeepSpeed (ops JIT-built there if ever needed; the check
# uses torch's AdamW), datasets and their pure-Python needs, and liger-kernel.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
PYTHON=${PYTHON:-$(test -x .venv/bin/python && echo .venv/bin/python || echo python3)}
exclude="$(git rev-parse --git-common-dir)/info/exclude"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
mkdir -p .whl
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  plat+=(--platform "$p")
done
get() {  # binary wheels for the GPU machine's Python 3.12 on x86-64, without their dependencies
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${plat[@]}" -d .whl "$@"
}
if ! ls .whl/deepspeed-*.whl >/dev/null 2>&1; then  # DeepSpeed ships only a source archive
  DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==${DEEPSPEED_VERSION:-0.19.8}"
fi
extra=()
[ -n "${NO_LIGER:-}" ] || extra+=("liger-kernel==${LIGER_VERSION:-0.8.5}")
get hjson pydantic pydantic-core annotated-types typing-inspection datasets dill multiprocess "${extra[@]}" "$@"
# one version per distribution: two versions of one package stop the whole offline install
"$PYTHON" - <<'PY'
import collections, os, re
by = collections.defaultdict(list)
for f in sorted(f for f in os.listdir(".whl") if f.endswith(".whl")):
    by[re.split(r"-\d", f, maxsplit=1)[0].lower().replace("_", "-")].append(f)
for fs in by.values():
    for old in sorted(fs, key=lambda f: os.path.getmtime(os.path.join(".whl", f)))[:-1]:
        os.remove(os.path.join(".whl", old))
PY
du -ch .whl/*.whl | tail -1
ls .whl
