#!/bin/bash
# stop the processes started by start-*.sh, by pid
. "$(dirname "$0")/env.sh"
for n in ccaas-tls ccaas peer orderer; do
  f=$NET/$n.pid; [ -f "$f" ] || continue
  p=$(cat "$f"); kill "$p" 2>/dev/null && echo "stopped $n ($p)"
  for i in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
  rm -f "$f"
done
