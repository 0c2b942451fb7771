#!/bin/bash
# launch.sh WID PORT0 PORT1 args...   (nice'd; TF_CONFIG on 127.0.0.1)
WID=$1; P0=$2; P1=$3; shift 3
export WID TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1} CUDA_VISIBLE_DEVICES=
export TF_CONFIG="{\"cluster\":{\"worker\":[\"127.0.0.1:$P0\",\"127.0.0.1:$P1\"]},\"task\":{\"type\":\"worker\",\"index\":$WID}}"
exec nice -n 19 /work/main/.venv/bin/python "$(dirname "$0")/mw.py" "$@"
