#!/usr/bin/env bash
# The GPU trainer's default command: train (and register) a model for DS on CUDA.
# TRAIN_DEVICE=cuda makes a missing GPU an error instead of a silent CPU run; extra arguments go to
# `recsys train`, e.g. `docker compose --profile gpu run --rm -e DS=2024-01-07 trainer --model base`.
set -euo pipefail

if [[ -z "${DS:-}" ]]; then
  echo "trainer: set DS=YYYY-MM-DD (the logical date to train for)" >&2
  exit 2
fi
exec recsys train --ds "${DS}" --set "train.device=${TRAIN_DEVICE:-cuda}" "$@"
