#!/usr/bin/env bash
# A fixed-wall-time training session (e.g. a GPU lent for N minutes) that later sessions resume.
#
#   training/gpu_run.sh SECONDS WEIGHTS_DIR [RUN_DIR] [-- vos-train options of a new run]
#
# Runs vos-train for at most SECONDS of wall time: the loop stops at SECONDS − MARGIN (default
# 10 % of SECONDS, at most 60 s: startup, final checkpoint and publishing fit in it) with a
# checkpoint. On CUDA whenever torch sees a GPU (bfloat16 autocast, WORKERS DataLoader
# processes, default nproc − 2, at most 8), else on the CPU (no workers; THREADS torch threads
# if set). RUN_DIR (default runs/gpu) is the run folder: holding a run (last.json), it is resumed
# with its own saved config (vos-train --resume; options after -- are then ignored); otherwise a
# new run starts with the options after -- (default: stage 1 with multi-object synthesis,
# --config lite --objects 3). At the end the weights go to WEIGHTS_DIR/$NAME.safetensors (+ .json,
# fp16; NAME default lite-main), with history.jsonl, last.json and loss.png of the run.
#
# `--iterations auto` (a new run only) sizes the run to the time left: CALIBRATE (default 30)
# iterations of the same options in a scratch folder time an iteration (the median of the
# per-iteration times after the first 5) and the start-up (wall time − loop time), then the real
# run gets N = ⌊(limit − calibration's wall time − start-up) / iteration time⌋ iterations, so its
# schedules (max skip, bootstrap, lr decay: fractions of N) complete instead of being cut by the
# time limit (which stays on as a safety net). N is printed and must be at least CALIBRATE.
# Run from the repository root (the configs' data paths are relative to it). Exit status: vos-train's.
set -euo pipefail

usage() { sed -n 2,4p "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 2 ] || usage
budget=$1; weights=$2; shift 2
run=runs/gpu
if [ $# -gt 0 ] && [ "$1" != "--" ]; then run=$1; shift; fi
[ $# -gt 0 ] && [ "$1" = "--" ] && shift
new_run=("$@")
[ ${#new_run[@]} -gt 0 ] || new_run=(--config lite --objects 3)
case $budget in ''|*[!0-9]*) echo "gpu_run.sh: SECONDS must be a whole number, got '$budget'" >&2; exit 2;; esac
margin=${MARGIN:-$(( budget / 10 < 60 ? budget / 10 : 60 ))}
limit=$(( budget - margin ))
[ "$limit" -gt 0 ] || { echo "gpu_run.sh: SECONDS ($budget) must exceed MARGIN ($margin)" >&2; exit 2; }
name=${NAME:-lite-main}

extra=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    cores=$(nproc)
    workers=${WORKERS:-$(( cores - 2 < 8 ? (cores - 2 > 0 ? cores - 2 : 0) : 8 ))}
    extra+=(--workers "$workers")
else
    echo "gpu_run.sh: no NVIDIA GPU visible: training on the CPU" >&2
    [ -n "${WORKERS:-}" ] && extra+=(--workers "$WORKERS")
fi
[ -n "${THREADS:-}" ] && extra+=(--threads "$THREADS")
mkdir -p "$weights"

auto=0
for ((i = 0; i < ${#new_run[@]}; i++)); do
    if [ "${new_run[i]}" = "--iterations" ] && [ "${new_run[i + 1]:-}" = "auto" ]; then auto=$((i + 1)); fi
done

if [ -f "$run/last.json" ]; then
    [ $# -gt 0 ] && echo "gpu_run.sh: resuming $run with its own config; ignoring: $*" >&2
    cmd=(vos-train --resume "$run")
else
    if [ "$auto" -gt 0 ]; then
        calibrate=${CALIBRATE:-30}
        case $calibrate in ''|*[!0-9]*) echo "gpu_run.sh: CALIBRATE must be a whole number, got '$calibrate'" >&2; exit 2;; esac
        [ "$calibrate" -ge 6 ] || { echo "gpu_run.sh: CALIBRATE must be at least 6, got $calibrate" >&2; exit 2; }
        scratch=$(mktemp -d "${TMPDIR:-/tmp}/gpu_run-calibrate.XXXXXX")
        trap 'rm -rf "$scratch"' EXIT
        calib=("${new_run[@]}"); calib[auto]=$calibrate
        echo "+ vos-train ${calib[*]} --out $scratch/run ${extra[*]}   (calibration)" >&2
        t_start=$(date +%s.%N)
        vos-train "${calib[@]}" --out "$scratch/run" "${extra[@]}" >&2
        t_end=$(date +%s.%N)
        sized=$(python3 - "$scratch/run/history.jsonl" "$t_start" "$t_end" "$limit" "$calibrate" <<'PY'
import json, statistics, sys
path, t_start, t_end, limit, calibrate = sys.argv[1], *map(float, sys.argv[2:5]), int(sys.argv[5])
seconds = [json.loads(line)["seconds"] for line in open(path)]
per_iteration = statistics.median(b - a for a, b in zip(seconds[4:], seconds[5:]))  # iterations 6, 7, …
wall = t_end - t_start
startup = max(0.0, wall - seconds[-1])
n = int((limit - wall - startup) / per_iteration)
print(f"gpu_run.sh: --iterations auto: {per_iteration:.3f} s/iteration, start-up {startup:.1f} s, "
      f"calibration {wall:.1f} s of {limit:.0f} s: {n} iterations", file=sys.stderr)
if n < calibrate:
    sys.exit(f"gpu_run.sh: --iterations auto: only {n} iterations fit in the time left "
             f"(fewer than CALIBRATE = {calibrate}); give more SECONDS")
print(n, max(1, int(limit - wall)))      # N, and the loop budget left after the calibration
PY
        )
        read -r "new_run[auto]" limit <<< "$sized"
    fi
    cmd=(vos-train "${new_run[@]}" --out "$run")
fi
cmd+=(--time-limit "$limit" --publish "$weights/$name.safetensors" "${extra[@]}")
echo "+ ${cmd[*]}" >&2
status=0
"${cmd[@]}" || status=$?
for f in history.jsonl last.json loss.png val.jsonl; do
    [ -f "$run/$f" ] && cp "$run/$f" "$weights/"
done
exit $status
