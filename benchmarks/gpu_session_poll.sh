#!/usr/bin/env bash
# Wait (up to $1 seconds, default 540) for a detached GPU session script to finish, then copy every
# finished, not yet returned result folder ($W/ret_*/ with a READY file) into $OUT. At most 8 files
# come back per device command, so folders are sent in name order while they fit.
set -u
W=${W:-/tmp/i6}
deadline=$((SECONDS + ${1:-540}))
while [ $SECONDS -lt $deadline ] && [ ! -f "$W/DONE" ]; do sleep 5; done
sent=0
for r in "$W"/ret_*; do
    [ -f "$r/READY" ] && [ ! -f "$r/SENT" ] || continue
    n=$(find "$r" -maxdepth 1 -type f ! -name READY | wc -l)
    [ $((sent + n)) -le 8 ] || continue
    mkdir -p "$OUT/$(basename "$r")"
    find "$r" -maxdepth 1 -type f ! -name READY -exec cp {} "$OUT/$(basename "$r")/" \;
    touch "$r/SENT"
    sent=$((sent + n))
done
echo "returned $sent file(s); DONE=$([ -f "$W/DONE" ] && echo yes || echo no)"
tail -n 25 "$W/driver.log" 2>/dev/null
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
