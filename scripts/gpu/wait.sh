#!/usr/bin/env bash
# On the GPU machine: wait SECONDS (or until driver.sh and scale.sh have both finished), then
# put what the runs wrote since go.sh under $OUT: runs.tar.xz (the experiment's new files, no
# weights), the logs, scale.json and scale.tar.xz (the scale stages' logs and JSON). Each call
# brings back everything so far. $OUT is also refreshed every two minutes of the wait, so a call
# killed at its time limit still brings back what had finished by the last refresh.
set -uo pipefail
# For tests (tests/test_gpu_scripts.py): the machine's /root, and the refresh's 120 s.
root=${GPU_ROOT:-/root}
refresh=${WAIT_REFRESH_S:-120}
[ -f "$root/start.marker" ] || { echo "wait.sh: no run to wait for: go.sh writes $root/start.marker" >&2; exit 1; }

collect() {
    # Each archive is written beside its final name, then renamed: a kill mid-write leaves the
    # previous refresh whole. No hidden paths: the runs write each file as a hidden temporary
    # and rename it (qradaptor/atomic.py), so one listed by find may be gone when tar reads it;
    # on 2026-12-07 such a plot (.sensitivity.png.syofwihu.png) failed a refresh's whole archive.
    # Locks (.qra.lock) are hidden too, and import.sh needs none. --ignore-failed-read keeps any
    # other file removed meanwhile from doing the same.
    (cd "$root/repo" && find docs/results -newer "$root/start.marker" -type f ! -path '*/.*' \
        ! -name '*.safetensors' ! -name '*.pt' ! -name '*.bin' ! -name '*.db' ! -name '*.db-*' -size -4M \
        > "$root/new.txt")
    tar -C "$root/repo" --ignore-failed-read -cJf "$OUT/.runs.tar.xz" -T "$root/new.txt" \
        && mv "$OUT/.runs.tar.xz" "$OUT/runs.tar.xz" || rm -f "$OUT/.runs.tar.xz"
    cp "$root/driver.log" "$root/scale.log" "$OUT/" 2>/dev/null
    local scale=$root/scale
    cp "$scale/scale.json" "$scale/train.json" "$scale/eval_once.txt" "$scale/step_profile.txt" \
        "$scale/eval_prefix.txt" "$OUT/" 2>/dev/null
    # The stages' logs and small result files (train.json names skipped steps), no weights.
    (cd "$scale" 2>/dev/null && find logs runs -type f \( -name '*.log' -o -name '*.json' -o -name '*.csv' \) \
        -size -2M 2>/dev/null | tar -cJf "$OUT/.scale.tar.xz" -T - && mv "$OUT/.scale.tar.xz" "$OUT/scale.tar.xz")
    rm -f "$OUT/.scale.tar.xz"  # left by a tar that failed
}

end=$(( $(date +%s) + ${1:-450} ))
next=$(( $(date +%s) + refresh ))
while [ "$(date +%s)" -lt "$end" ]; do
    if [ -f "$root/driver.done" ] && [ -f "$root/scale.done" ]; then break; fi
    if [ "$(date +%s)" -ge "$next" ]; then collect; next=$(( $(date +%s) + refresh )); fi
    sleep 1
done
collect
ls "$root/scale/runs" 2>/dev/null | head
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv 2>/dev/null
echo "--- driver"; tail -25 "$root/driver.log"; echo "--- scale"; tail -15 "$root/scale.log" 2>/dev/null
echo "files: $(wc -l < "$root/new.txt")"; ls "$root"/*.done 2>/dev/null
