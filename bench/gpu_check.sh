#!/usr/bin/env bash
# The GPU table of the recording benchmarks, in one prepared run (BENCHMARKS.md, "GPU table").
#
#   bash bench/gpu_check.sh wheels   # here, with pip and a package registry: the wheels a GPU machine
#                                    # without zarr, pydantic... needs, for CPython 3.12, into .whl/
#   bash bench/gpu_check.sh run      # there, from the repository root: installs what is missing from
#                                    # .whl/, runs tests/gpu (the GPU path's correctness, on the GPU), then
#                                    # side-by-side A/Bs (record_call; record.writer thread against loop;
#                                    # recorder_ab, this recorder against AB_BASE's), record_overhead
#                                    # (reference, wide), record_ceiling
#                                    # (reference states, with the recorder fed device
#                                    # states too; wide states), step_anatomy (reference), most
#                                    # needed first, each under its own limit
#                                    # within BUDGET; every table lands in $OUT (default ./gpu-check),
#                                    # 8 files at most, stage times in machine.txt
#
# Environment: DEVICE (cuda; cpu rehearses the run on a machine without a GPU), TESTS_TIMEOUT (seconds for
# tests/gpu, 200: its 9 CUDA cases), TRAJSCOPE_TEST_GPU_STEPS (steps of its killed run on the GPU, 10000), STEPS (reference config,
# 3000), WIDE_STEPS (wide config, 300), REPEATS (3), CEILING_MB (512), WIDE_CEILING_MB (256; 512 took over 60 s on an H200),
# BUDGET (seconds for all stages, 570: a device call may run 600), STAGES (the stages to run, by file name without its suffix, comma-
# separated: gpu_tests,overhead_reference,...; all), VARIANTS (record_overhead's --variants for the reference
# config; all but "thread", which is what "every" (record.writer auto) runs),
# PYVER (3.12, for `wheels`), AB_BASE (for `wheels`: the git revision whose producer/recorder.py the run's
# recorder_ab stage compares with this checkout's, saved as .whl/recorder_base.py; b67b865, before one copy
# launch a state), AB_REPEATS (7).
set -uo pipefail
cd "$(dirname "$0")/.."

# what a machine with torch, numpy, fsspec, xarray, pandas, rich, typer, yaml, toolz, cloudpickle, click has and
# the benches lack (dask: open_run opens lazily; a rehearsal in an environment like the GPU machine's found it;
# on CPython 3.12 dask takes importlib.metadata from the standard library)
MISSING="zarr numcodecs donfig crc32c google-crc32c pydantic pydantic-core annotated-types typing-inspection
  dask partd locket"

case "${1:-}" in
wheels)
  mkdir -p .whl
  for name in $MISSING; do
    version=$(python3 -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") || {
      echo "gpu_check: $name is not installed here; install the project first (pip install -e .)" >&2; exit 2; }
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$name==$version" \
      || { echo "gpu_check: no wheel of $name==$version for CPython ${PYVER:-3.12}" >&2; exit 2; }
  done
  git show "${AB_BASE:-b67b865}:producer/recorder.py" > .whl/recorder_base.py.part \
    && mv .whl/recorder_base.py.part .whl/recorder_base.py \
    || { rm -f .whl/recorder_base.py.part; echo "gpu_check: no producer/recorder.py at ${AB_BASE:-b67b865}" >&2; exit 2; }
  ls -l .whl
  ;;
run)
  out=${OUT:-gpu-check}
  mkdir -p "$out"
  export PYTHONUNBUFFERED=1
  # install only what does not import (a machine that has the project's environment installs nothing)
  absent=$(python3 - $MISSING <<'EOF'
import importlib.util, sys
modules = {"pydantic-core": "pydantic_core", "annotated-types": "annotated_types", "google-crc32c": "google_crc32c",
           "typing-inspection": "typing_inspection"}
print(" ".join(n for n in sys.argv[1:] if importlib.util.find_spec(modules.get(n, n)) is None))
EOF
)
  if [ -n "$absent" ]; then
    wheels=$(for n in $absent; do ls .whl/"${n//-/_}"-*.whl 2>/dev/null; done)
    [ -n "$wheels" ] || { echo "gpu_check: missing $absent and no wheels in .whl/ (run 'bash bench/gpu_check.sh wheels' first)" >&2; exit 2; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels || exit 2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # from another directory: here ./trajscope would import, but not trajscope.store (its folder is ./store)
  (cd / && python3 -c "import trajscope.store, trajscope.producer") 2>/dev/null \
    || python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . \
    || { echo "gpu_check: could not install the project (pip install -e .)" >&2; exit 2; }
  device=${DEVICE:-cuda}
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    nproc; } > "$out/machine.txt"
  export TRAJSCOPE_BENCH_DIR=${TRAJSCOPE_BENCH_DIR:-$PWD}
  status=0
  # each stage under its own limit and the run's deadline (BUDGET seconds from here), so one slow stage
  # cannot take the others' time; its seconds land in machine.txt (a device run returns at most 8 files)
  deadline=$(( $(date +%s) + ${BUDGET:-570} ))
  stage() {  # stage FILE LIMIT COMMAND...: COMMAND's output into $out/FILE and on stdout
    local file=$1 limit=$2 began left; shift 2
    case ",${STAGES:-all}," in *",${file%.*},"*|*,all,*) ;; *) return ;; esac
    began=$(date +%s); left=$(( deadline - began )); [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 15 ]; then echo "$file: skipped, ${left}s left of BUDGET" | tee -a "$out/machine.txt"; status=1; return; fi
    # KILL: a produce run ends gracefully on SIGTERM and the bench would go on with a shortened run
    timeout -s KILL "$limit" "$@" > "$out/$file" 2>&1
    local rc=$?
    [ "$rc" -eq 0 ] || { status=1; echo "(exit $rc after $(( $(date +%s) - began ))s, limit ${limit}s)" >> "$out/$file"; }
    cat "$out/$file"
    echo "$file: $(( $(date +%s) - began ))s (limit ${limit}s)" >> "$out/machine.txt"
  }
  # first what must hold on the GPU itself: recorded states equal copies taken in the loop, SIGKILL + resume
  # is bit-identical, with the writer thread and the writer process (tests/gpu, its cases for $device; for
  # cuda a machine where torch sees no GPU fails here instead of skipping)
  require=0; [ "$device" = cuda ] && require=1
  export TRAJSCOPE_TEST_REQUIRE_CUDA=$require
  stage gpu_tests.txt "${TESTS_TIMEOUT:-200}" \
    python3 -m pytest -q -rs -p no:cacheprovider tests/gpu -k "$device"
  # side by side, in interleaved repeats: record() alone, one copy launch a state against one per dtype; the
  # writer thread handing chunks to the store against the loop doing it (record.writer: loop); this recorder
  # against the base's (.whl/recorder_base.py, if there), each over the bare loop of its repeat
  stage ab_reference.md 150 bash -c 'python3 bench/record_call.py --device "$1" --repeats "$3" || exit
    python3 bench/record_overhead.py --device "$1" --config reference --steps "$2" --repeats "$3" \
      --variants every,loop --no-baselines || exit
    [ -f .whl/recorder_base.py ] || { echo "no .whl/recorder_base.py: no recorder A/B"; exit 0; }
    python3 bench/recorder_ab.py --what overhead --device "$1" --base-file .whl/recorder_base.py --steps "$2" \
      --repeats "$3"' _ "$device" "${STEPS:-3000}" "${AB_REPEATS:-7}"
  stage overhead_reference.md 130 python3 bench/record_overhead.py --device "$device" --config reference \
    --steps "${STEPS:-3000}" --repeats "${REPEATS:-3}" --variants "${VARIANTS:-every,buffered,direct,process,fsync,dropped,npsave,torchsave}"
  stage overhead_wide.md 80 python3 bench/record_overhead.py --device "$device" --config wide \
    --steps "${WIDE_STEPS:-300}" --repeats "${REPEATS:-3}" --no-baselines
  # with the states on the device too (--device: a GPU run's path, thread and loop), beside the CPU rows
  stage ceiling.md 90 python3 bench/record_ceiling.py --mb "${CEILING_MB:-512}" --repeats "${REPEATS:-3}" \
    --device "$device"
  # the wide config's 6.3 MB states (chunks of 4): the store path a GPU recorder's writer thread writes
  # through (record.writer auto is the thread)
  stage ceiling_wide.md 120 python3 bench/record_ceiling.py --config wide --mb "${WIDE_CEILING_MB:-256}" \
    --repeats "${REPEATS:-3}"
  # where a recorded step's host time goes (record(), hand-offs, commits), against the bare loop's
  stage anatomy_reference.md 50 python3 bench/step_anatomy.py --device "$device" --config reference \
    --steps "${STEPS:-3000}" --repeats "${REPEATS:-3}"
  exit $status
  ;;
*)
  echo "usage: bash bench/gpu_check.sh wheels|run   (see the header of bench/gpu_check.sh)" >&2
  exit 2
  ;;
esac
