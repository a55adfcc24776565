#!/usr/bin/env bash
# On the GPU machine, after setup.sh: copy the checkout to /root/repo (later calls replace the
# checkout; the runs must not see that), start driver.sh and scale.sh in their own sessions
# (they outlive this call), then wait like wait.sh. Usage: go.sh SECONDS
set -uo pipefail
[ -f /root/site/.ready ] || { echo "setup.sh has not finished"; exit 1; }
rm -rf /root/repo && cp -a "$PWD" /root/repo && rm -rf /root/repo/.gpub*
touch /root/start.marker
cd /root/repo
setsid nohup bash scripts/gpu/driver.sh > /root/driver.log 2>&1 < /dev/null &
setsid nohup bash scripts/gpu/scale.sh > /root/scale.log 2>&1 < /dev/null &
sleep 5
exec bash scripts/gpu/wait.sh "${1:-540}"
