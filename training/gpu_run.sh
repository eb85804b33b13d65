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

if [ -f "$run/last.json" ]; then
    [ $# -gt 0 ] && echo "gpu_run.sh: resuming $run with its own config; ignoring: $*" >&2
    cmd=(vos-train --resume "$run")
else
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
