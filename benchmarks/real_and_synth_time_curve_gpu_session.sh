#!/usr/bin/env bash
# The time-curve and held-out measurement on the GPU machine (first done for issue 6), in one detached run (RESULTS.md's section "the whole measurement on
# `dfrf_french.mp4` and a 60 s synthetic subject"; its synthetic gstalker-eval table was re-run on a
# second machine with the commands listed there, after the first went back mid-evaluation).
#
# A device command lasts at most 10 minutes, so this script is started with `setsid` and outlives
# the command that starts it; later commands poll it with benchmarks/gpu_session_poll.sh, which
# returns each finished result folder ($W/ret_*) through $OUT.
#
#   phase 1  gstalker on the real clip, alone on the GPU: the timed curve (5/10/20/40 min marks)
#   phase 2  three untimed trainings at once: splatfacto on the real clip, gstalker (10k steps)
#            and splatfacto on the 60 s synthetic subject
#   phase 3  one at a time: time-curve evaluation (held-out metrics per mark, batch-1 latency,
#            peak memory), then gstalker-eval with the splatfacto baseline on both subjects,
#            packed as JPEG parts for `pack_eval_frames.py unpack` + `gstalker-eval --lipsync-from`
#
# Inputs (carried): .gpu_data/fr100 and .gpu_data/syn60, packed by benchmarks/pack_dataset.py.
set -u
W=${W:-/tmp/i6}
PHASE1_SECONDS=${PHASE1_SECONDS:-1260}
SYNTH_STEPS=${SYNTH_STEPS:-10000}
mkdir -p "$W"
log() { echo "[$(date +%T)] $*" | tee -a "$W/driver.log"; }
step() {  # step NAME COMMAND...: run, log its exit status and the tail of its output
    local name=$1; shift
    log "start $name"
    "$@" >"$W/$name.log" 2>&1
    local rc=$?
    log "end $name rc=$rc: $(tail -n 1 "$W/$name.log")"
}
curve() { python3 benchmarks/gpu_time_curve.py "$@"; }

log "unpacking"
python3 benchmarks/pack_dataset.py --unpack .gpu_data/fr100 "$W/fr" >"$W/unpack.log" 2>&1
python3 benchmarks/pack_dataset.py --unpack .gpu_data/syn60 "$W/syn" >>"$W/unpack.log" 2>&1
log "unpacked: $(ls "$W/fr/frames" | wc -l) real frames, $(ls "$W/syn/frames" | wc -l) synthetic frames"

step p1_gstalker_fr curve train --method gstalker --subject "$W/fr" --workdir "$W/curve_fr" \
    --segment-seconds "$PHASE1_SECONDS"

log "phase 2 (three trainings at once, untimed)"
step p2_splatfacto_fr curve train --method splatfacto --subject "$W/fr" --workdir "$W/curve_fr" \
    --segment-seconds 600 --save-every 1000 &
step p2_gstalker_syn curve train --method gstalker --subject "$W/syn" --workdir "$W/curve_syn" \
    --iterations "$SYNTH_STEPS" --save-every 1000 --segment-seconds 600 &
step p2_splatfacto_syn curve train --method splatfacto --subject "$W/syn" --workdir "$W/curve_syn" \
    --segment-seconds 600 --save-every 1000 &
wait

mkdir -p "$W/curves" "$W/ret_fr" "$W/ret_syn"
step p3_curve_gstalker_fr curve evaluate --method gstalker --subject "$W/fr" --workdir "$W/curve_fr" \
    --marks 5,10,20,40 --out "$W/curves/fr"
step p3_curve_splatfacto_fr curve evaluate --method splatfacto --subject "$W/fr" --workdir "$W/curve_fr" \
    --marks 40 --out "$W/curves/fr"

config() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['config'])" "$1"; }
bundle_curves() {  # bundle_curves TARBALL: the logs, timelines and time-curve results so far
    cp "$W"/*.log "$W/curves/" 2>/dev/null
    cp "$W"/curve_*/*_timeline.json "$W/curves/" 2>/dev/null
    tar -czf "$1" -C "$W" curves
}
for subject in fr syn; do
    step "p3_eval_$subject" gstalker-eval --load-config "$(config "$W/curve_$subject/gstalker_timeline.json")" \
        --baseline splatfacto --baseline-config "$(config "$W/curve_$subject/splatfacto_timeline.json")" \
        --no-video --quiet --output-dir "$W/eval_$subject"
    step "p3_pack_$subject" python3 benchmarks/pack_eval_frames.py pack "$W/eval_$subject" "$W/ret_$subject"
    if [ "$subject" = fr ]; then
        bundle_curves "$W/ret_fr/curves.tar.gz"
        touch "$W/ret_fr/READY"
    fi
done
step p3_curve_gstalker_syn curve evaluate --method gstalker --subject "$W/syn" --workdir "$W/curve_syn" \
    --marks 40 --out "$W/curves/syn"
bundle_curves "$W/ret_syn/curves_all.tar.gz"
touch "$W/ret_syn/READY"
log "DONE"
touch "$W/DONE"
