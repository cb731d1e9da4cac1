#!/usr/bin/env bash
# Profiles the mdfuse daemon (bitmap on, as in run.sh) under one short fio
# workload: perf (cpu-clock samples with call graphs) and strace (syscall
# counts, FUSE request sizes). Usage:
#   bench/profile.sh WORKLOAD [perf|strace|both]
# WORKLOAD: seqwrite seqread randwrite randread randrw randwrite_buffered seqwrite_buffered
# Output in $OUTDIR (default /tmp/mdfuse-profile/WORKLOAD). Root; cleans up on exit.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
MDFUSE=${MDFUSE:-$REPO/target/release/mdfuse}
WL=${1:?workload}
TOOL=${2:-both}
WORK=${WORK:-/var/tmp/mdfuse-profile}
OUTDIR=${OUTDIR:-/tmp/mdfuse-profile/$WL}
SECS=${SECS:-5}
EXTRA_MOUNT_ARGS=${EXTRA_MOUNT_ARGS:-}
mkdir -p "$OUTDIR"

LOOP=""; PID=""; MNT=$WORK/mnt
cleanup() {
    set +e
    grep -q " $MNT fuse" /proc/mounts && { umount "$MNT" || umount -l "$MNT"; }
    [ -n "$PID" ] && { for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done; kill "$PID" 2>/dev/null; }
    mountpoint -q "$WORK/bmfs" && umount "$WORK/bmfs"
    [ -n "$LOOP" ] && losetup -d "$LOOP"
    rm -rf "$WORK"
}
trap cleanup EXIT
rm -rf "$WORK"; mkdir -p "$WORK/bmfs" "$MNT"
for l in leg0 leg1; do
    fallocate -l 1G "$WORK/$l"
    dd if=/dev/zero of="$WORK/$l" bs=1M count=1024 oflag=direct conv=notrunc status=none
done
truncate -s 64M "$WORK/bmfs.img"
LOOP=$(losetup -f --show "$WORK/bmfs.img")
mkfs.ext4 -q -F "$LOOP"; mount "$LOOP" "$WORK/bmfs"
"$MDFUSE" create --force --bitmap "$WORK/bmfs/bm" "$WORK/leg0" "$WORK/leg1" >/dev/null
# shellcheck disable=SC2086
RUST_LOG=info "$MDFUSE" mount -f $EXTRA_MOUNT_ARGS --bitmap "$WORK/bmfs/bm" "$WORK/leg0" "$WORK/leg1" "$MNT" \
    2> "$OUTDIR/daemon.log" &
PID=$!
for _ in $(seq 100); do grep -q " $MNT fuse" /proc/mounts && break; sleep 0.1; done
IMG=$MNT/array.img
BDI=/sys/class/bdi/$(mountpoint -d "$MNT")
# BDI_MAX_RATIO=N: let the FUSE mount's page cache use N% of the dirty limit
# (FUSE mounts default to max_ratio 1 with strict limiting).
if [ -n "${BDI_MAX_RATIO:-}" ]; then
    echo "$BDI_MAX_RATIO" > "$BDI/max_ratio"
    [ -e "$BDI/strict_limit" ] && echo 0 > "$BDI/strict_limit"
fi
grep . "$BDI"/* > "$OUTDIR/bdi.txt" 2>/dev/null || true
fio_job() {
    local t=$1
    local common=(--name=p --filename="$IMG" --size=1000M --time_based --runtime="$t" --thread --norandommap --randrepeat=0)
    case $WL in
        seqwrite) fio "${common[@]}" --rw=write --bs=1M --direct=1 ;;
        seqread) fio "${common[@]}" --rw=read --bs=1M --direct=1 ;;
        randwrite) fio "${common[@]}" --rw=randwrite --bs=4k --direct=1 --ioengine=libaio --iodepth=16 ;;
        randwrite_qd1) fio "${common[@]}" --rw=randwrite --bs=4k --direct=1 --ioengine=psync ;;
        randwrite_jobs16) fio "${common[@]}" --rw=randwrite --bs=4k --direct=1 --ioengine=psync --numjobs=16 --group_reporting ;;
        randread) fio "${common[@]}" --rw=randread --bs=4k --direct=1 --ioengine=libaio --iodepth=16 ;;
        randrw) fio "${common[@]}" --rw=randrw --rwmixread=70 --bs=4k --direct=1 --ioengine=libaio --iodepth=16 ;;
        randwrite_buffered) fio "${common[@]}" --rw=randwrite --bs=4k --direct=0 --numjobs=16 --end_fsync=1 ;;
        seqwrite_buffered) fio "${common[@]}" --rw=write --bs=1M --direct=0 --end_fsync=1 ;;
        *) echo "unknown workload $WL" >&2; exit 2 ;;
    esac
}
case $WL in *read*) fio --name=fill --filename="$IMG" --size=1000M --rw=write --bs=1M --direct=1 >/dev/null ;; esac
# A baseline run without a tracer, for the figure.
fio_job "$SECS" > "$OUTDIR/fio.plain.txt"
if [ "$TOOL" = perf ] || [ "$TOOL" = both ]; then
    perf record -e cpu-clock -F 2000 --call-graph dwarf,32768 -p "$PID" -o "$OUTDIR/perf.data" -- sleep "$SECS" \
        2> "$OUTDIR/perf.record.log" &
    PP=$!
    fio_job "$SECS" > "$OUTDIR/fio.perf.txt"
    wait $PP || true
    perf report -i "$OUTDIR/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null | head -60 > "$OUTDIR/perf.flat.txt" || true
    perf report -i "$OUTDIR/perf.data" --children --sort symbol --stdio -g none 2>/dev/null | head -80 > "$OUTDIR/perf.children.txt" || true
fi
if [ "$TOOL" = strace ] || [ "$TOOL" = both ]; then
    timeout -s INT $((SECS)) strace -f -c -p "$PID" -o "$OUTDIR/strace.count.txt" &
    SP=$!
    fio_job "$SECS" > "$OUTDIR/fio.strace.txt"
    wait $SP || true
    timeout -s INT 2 strace -f -e trace=read,writev,pwrite64,pread64 -e signal=none -p "$PID" -o "$OUTDIR/strace.io.txt" &
    SP=$!
    fio_job 2 > /dev/null
    wait $SP || true
fi
grep -E 'Vm(RSS|HWM)|Threads' "/proc/$PID/status" > "$OUTDIR/status.txt"
cat "$MNT/mdstat" > "$OUTDIR/mdstat.txt"
echo "done: $OUTDIR"
