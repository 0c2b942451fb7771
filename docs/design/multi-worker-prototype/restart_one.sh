#!/bin/bash
# restart_one.sh RUNDIR args...: relaunch only worker 1 on the run's ports
R=$1; shift; read P0 P1 < $R/ports
"$(dirname "$0")/launch.sh" 1 $P0 $P1 --ckpt $R/c --out $R/w1.npz "$@" >> $R/w1.log 2>&1 & echo $! > $R/pid1
