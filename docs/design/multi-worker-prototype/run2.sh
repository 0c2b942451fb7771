#!/bin/bash
# run2.sh RUNDIR args...: start both workers on fresh ports, in background; prints pids
R=$1; shift; mkdir -p $R
read P0 P1 < <(/work/main/.venv/bin/python "$(dirname "$0")/freeports.py")
echo "$P0 $P1" > $R/ports
"$(dirname "$0")/launch.sh" 0 $P0 $P1 --ckpt $R/c --out $R/w0.npz "$@" >> $R/w0.log 2>&1 & echo $! > $R/pid0
"$(dirname "$0")/launch.sh" 1 $P0 $P1 --ckpt $R/c --out $R/w1.npz "$@" >> $R/w1.log 2>&1 & echo $! > $R/pid1
