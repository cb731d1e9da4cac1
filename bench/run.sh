#!/usr/bin/env bash
# mdfuse benchmark: fio on the raw legs, mdfuse with and without its
# write-intent bitmap, and qemu-storage-daemon's quorum over a FUSE export,
# all in one run, each figure reported as a ratio to the raw legs of the same
# run. See bench/METHOD.md. Runs as root; < 10 minutes on 2 cores.
#
# Knobs (environment): WORK (directory on a real disk, not tmpfs;
# default /var/tmp/mdfuse-bench), LEG_SIZE (default 1G), IO_SIZE (the extent
# fio uses, default 1000M: fits inside the array after md's data offset),
# RUNTIME (seconds per job, default 8), THREADS (mdfuse --threads, default 16),
# SKIP_BUILD=1, KEEP_OUTPUT=1 (keep the raw fio JSON in $WORK/out),
# MDFUSE (another mdfuse binary, e.g. an experiment; implies nothing about
# SKIP_BUILD), BDI_MAX_RATIO (experiment: raise the mdfuse mount's dirty-page
# share, /sys/class/bdi/<dev>/max_ratio, and clear strict_limit), URING=0
# (leave out the FUSE-over-io_uring target; by default it runs when the
# kernel has /sys/module/fuse/parameters/enable_uring, which the run sets
# to Y and puts back as it was on exit), BASELINE (another mdfuse binary,
# e.g. one built from an older commit: an A/B target 'baseline_bitmap',
# bitmap on and /dev/fuse, run right after mdfuse_bitmap on each workload,
# so both face the same machine; see "A/B" in METHOD.md), REMOTE=0 (leave
# out the remote-leg target: one local leg and one served by qemu-nbd over
# a Unix socket; by default it runs when qemu-nbd is installed).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
WORK=${WORK:-/var/tmp/mdfuse-bench}
LEG_SIZE=${LEG_SIZE:-1G}
IO_SIZE=${IO_SIZE:-1000M}
RUNTIME=${RUNTIME:-8}
THREADS=${THREADS:-16}
MDFUSE=${MDFUSE:-$REPO/target/release/mdfuse}
BASELINE=${BASELINE:-}
OUT=$WORK/out
STAMP=$(date -u +%Y-%m-%dT%H%MZ)
RESULT=${RESULT:-$HERE/results/$STAMP.json}

log() { printf '[%s] %s\n' "$(date -u +%T)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (loop devices, mounts)"

# ---------------------------------------------------------------- cleanup
# Everything this run creates is recorded here and undone on any exit.
MOUNTS=()   # mdfuse mountpoints
PIDS=()     # daemons we started (qemu-storage-daemon, mdfuse)
LOOPS=()    # loop devices we attached
FSMOUNTS=() # ext4 mounts
cleanup() {
    local rc=$?
    set +e
    restore_uring
    for m in "${MOUNTS[@]}"; do
        if mountpoint -q "$m" 2>/dev/null || grep -q " $m fuse" /proc/mounts; then
            "$MDFUSE" stop --timeout 30 "$m" >/dev/null 2>&1 || umount -l "$m" 2>/dev/null
        fi
    done
    for p in "${PIDS[@]}"; do
        if kill -0 "$p" 2>/dev/null; then
            kill "$p" 2>/dev/null
            for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.3; done
            kill -9 "$p" 2>/dev/null
        fi
    done
    for f in "$WORK"/qemu.img; do grep -q " $f fuse" /proc/mounts 2>/dev/null && umount -l "$f"; done
    for m in "${FSMOUNTS[@]}"; do umount "$m" 2>/dev/null || umount -l "$m"; done
    for d in "${LOOPS[@]}"; do losetup -d "$d" 2>/dev/null; done
    if [ "${KEEP_OUTPUT:-0}" = 1 ]; then
        rm -f "$WORK"/*.img "$WORK"/big*.leg
    else
        rm -rf "$WORK"
    fi
    [ $rc -ne 0 ] && log "exit $rc; cleaned up"
    exit $rc
}
# FUSE over io_uring: the kernel's switch, on for this run, put back after.
URING_PARAM=/sys/module/fuse/parameters/enable_uring
URING_OLD=
if [ "${URING:-1}" = 1 ] && [ -w "$URING_PARAM" ]; then
    URING_OLD=$(cat "$URING_PARAM")
fi
restore_uring() { [ -n "$URING_OLD" ] && echo "$URING_OLD" > "$URING_PARAM"; return 0; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- tools
need=()
command -v fio >/dev/null || need+=(fio)
command -v qemu-storage-daemon >/dev/null || need+=(qemu-utils)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release"
    (cd "$REPO" && cargo build --release -q) || die "build failed"
fi
[ -x "$MDFUSE" ] || die "$MDFUSE missing"
[ -z "$BASELINE" ] || [ -x "$BASELINE" ] || die "BASELINE=$BASELINE is not an executable"

rm -rf "$WORK"
mkdir -p "$WORK" "$OUT"
fstype=$(stat -f -c %T "$WORK")
[ "$fstype" = tmpfs ] && die "$WORK is on tmpfs; set WORK to a directory on a real disk"

# The legs: a pair of files per target, on the same disk, each written in
# full first so no target pays for allocating them. Each target has its own
# pair so that all of them can be up at once and every workload runs on the
# four targets back to back (see "Interleaved" in METHOD.md).
pair() { echo "$WORK/$1-leg0.img $WORK/$1-leg1.img"; }
read -r RAW0 RAW1 <<< "$(pair raw)"
read -r BM0 BM1 <<< "$(pair bitmap)"
read -r NB0 NB1 <<< "$(pair nobitmap)"
read -r Q0 Q1 <<< "$(pair qemu)"
read -r BU0 BU1 <<< "$(pair bitmap-uring)"
read -r BB0 BB1 <<< "$(pair baseline)"
read -r RM0 RM1 <<< "$(pair remote)"
REMOTE_LEGS=()
if [ "${REMOTE:-1}" = 1 ] && command -v qemu-nbd >/dev/null; then
    REMOTE_LEGS=("$RM0" "$RM1")
fi
URING_LEGS=()
[ -n "$URING_OLD" ] && URING_LEGS=("$BU0" "$BU1")
BASELINE_LEGS=()
[ -n "$BASELINE" ] && BASELINE_LEGS=("$BB0" "$BB1")
log "legs: $((4 + ${#URING_LEGS[@]} / 2 + ${#BASELINE_LEGS[@]} / 2 + ${#REMOTE_LEGS[@]} / 2)) pairs x 2 x $LEG_SIZE in $WORK ($fstype)"
for l in "$RAW0" "$RAW1" "$BM0" "$BM1" "$NB0" "$NB1" "$Q0" "$Q1" "${URING_LEGS[@]}" "${BASELINE_LEGS[@]}" "${REMOTE_LEGS[@]}"; do
    fallocate -l "$LEG_SIZE" "$l"
    dd if=/dev/zero of="$l" bs=1M count=$(( $(stat -c %s "$l") >> 20 )) oflag=direct conv=notrunc status=none
done

# The bitmap's filesystem: ext4 on a loop device over a file on the same disk.
BMIMG=$WORK/bitmap-fs.img
BMFS=$WORK/bitmap-fs
truncate -s 64M "$BMIMG"
mkdir -p "$BMFS"
BMLOOP=$(losetup -f --show "$BMIMG")
LOOPS+=("$BMLOOP")
mkfs.ext4 -q -F "$BMLOOP"
mount "$BMLOOP" "$BMFS"
FSMOUNTS+=("$BMFS")

MNT=$WORK/mnt
MNT_BM=$WORK/mnt-bitmap
MNT_NB=$WORK/mnt-nobitmap
MNT_BU=$WORK/mnt-bitmap-uring
MNT_BB=$WORK/mnt-baseline
MNT_RM=$WORK/mnt-remote
mkdir -p "$MNT" "$MNT_BM" "$MNT_NB" "$MNT_BU" "$MNT_BB" "$MNT_RM"
MOUNTS+=("$MNT" "$MNT_BM" "$MNT_NB" "$MNT_BU" "$MNT_BB" "$MNT_RM")

# ---------------------------------------------------------------- fio
# Common options; a job's own options follow. Each job is time based over the
# same IO_SIZE extent, after the image has been written in full.
FIO_COMMON=(--output-format=json --size="$IO_SIZE" --randrepeat=0 --norandommap
    --thread --allow_mounted_write=1)

# workload name -> fio options (the mix: 70% reads)
declare -A WL=(
    [seqwrite_direct]="--rw=write --bs=1M --ioengine=psync --direct=1"
    [seqread_direct]="--rw=read --bs=1M --ioengine=psync --direct=1"
    [randwrite_direct]="--rw=randwrite --bs=4k --ioengine=libaio --iodepth=16 --direct=1"
    [randread_direct]="--rw=randread --bs=4k --ioengine=libaio --iodepth=16 --direct=1"
    [randrw_direct]="--rw=randrw --rwmixread=70 --bs=4k --ioengine=libaio --iodepth=16 --direct=1"
    [seqwrite_buffered]="--rw=write --bs=1M --ioengine=psync --direct=0 --end_fsync=1"
    [seqread_buffered]="--rw=read --bs=1M --ioengine=psync --direct=0"
    [randwrite_buffered]="--rw=randwrite --bs=4k --ioengine=psync --numjobs=16 --direct=0 --end_fsync=1"
    [randread_buffered]="--rw=randread --bs=4k --ioengine=psync --numjobs=16 --direct=0"
    [randrw_buffered]="--rw=randrw --rwmixread=70 --bs=4k --ioengine=psync --numjobs=16 --direct=0 --end_fsync=1"
)
# Order: writes first on a filled image, reads after; buffered after direct.
ORDER=(seqwrite_direct seqread_direct randwrite_direct randread_direct randrw_direct
    seqwrite_buffered seqread_buffered randwrite_buffered randread_buffered randrw_buffered)

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# fio_on TARGET WORKLOAD FILE... : one fio run, one job section per file
# (several files only for the raw legs' writes: both legs at once).
fio_on() {
    local target=$1 wl=$2; shift 2
    local args=() i=0
    # shellcheck disable=SC2206
    local opts=(${WL[$wl]})
    for f in "$@"; do
        args+=(--name="leg$i" --filename="$f" "${opts[@]}" --time_based --runtime="$RUNTIME")
        i=$((i + 1))
    done
    drop_caches
    local pid=${TARGET_PID[$target]:-}
    [ -n "$pid" ] && cpu_snapshot "$pid" > "$OUT/$target.$wl.cpu0"
    fio "${FIO_COMMON[@]}" "${args[@]}" > "$OUT/$target.$wl.json" 2>"$OUT/$target.$wl.err" ||
        die "fio $wl on $target: $(tail -3 "$OUT/$target.$wl.err")"
    [ -n "$pid" ] && cpu_snapshot "$pid" > "$OUT/$target.$wl.cpu1"
    return 0
}

# cpu_snapshot PID: the daemon's context switches (voluntary, involuntary,
# summed over its threads) and its CPU time (utime + stime, clock ticks).
cpu_snapshot() {
    local sw ticks
    sw=$(cat /proc/"$1"/task/*/status 2>/dev/null |
        awk '/^voluntary_ctxt_switches/ { v += $2 } /^nonvoluntary_ctxt_switches/ { n += $2 }
             END { print v + 0, n + 0 }')
    ticks=$(awk '{ print $14 + $15 }' /proc/"$1"/stat)
    echo "$sw $ticks $(getconf CLK_TCK)"
}

# fill TARGET FILE... : writes the whole extent once (1 MiB, O_DIRECT), so
# reads read written data; also recorded (seq write of a full pass).
fill() {
    local target=$1; shift
    local args=() i=0
    for f in "$@"; do
        args+=(--name="leg$i" --filename="$f" --rw=write --bs=1M --ioengine=psync --direct=1)
        i=$((i + 1))
    done
    fio "${FIO_COMMON[@]}" "${args[@]}" > "$OUT/$target.fill.json" 2>"$OUT/$target.fill.err" ||
        die "fill on $target: $(tail -3 "$OUT/$target.fill.err")"
}

# targets, in the order each workload runs on them; TARGET_READ/TARGET_WRITE:
# a target's file(s) (the raw writes go to both legs at once).
TARGETS=(raw mdfuse_bitmap mdfuse_nobitmap qemu_quorum)
[ -n "$URING_OLD" ] && TARGETS=(raw mdfuse_bitmap mdfuse_bitmap_uring mdfuse_nobitmap qemu_quorum)
[ -n "$BASELINE" ] && TARGETS=("${TARGETS[0]}" "${TARGETS[1]}" baseline_bitmap "${TARGETS[@]:2}")
[ ${#REMOTE_LEGS[@]} -gt 0 ] && TARGETS+=(mdfuse_remote)
declare -A TARGET_READ TARGET_WRITE TARGET_PID

run_all_targets() {
    local t wl
    for t in "${TARGETS[@]}"; do
        log "$t: fill"
        # shellcheck disable=SC2086
        fill "$t" ${TARGET_WRITE[$t]}
    done
    for wl in "${ORDER[@]}"; do
        for t in "${TARGETS[@]}"; do
            log "$wl: $t"
            case $wl in
                # shellcheck disable=SC2086
                *read_*) fio_on "$t" "$wl" ${TARGET_READ[$t]} ;;
                # shellcheck disable=SC2086
                *) fio_on "$t" "$wl" ${TARGET_WRITE[$t]} ;;
            esac
        done
    done
}

daemon_pid() { sed -n 's/.*, pid \([0-9]*\)$/\1/p' "$1" | tail -1; }

mount_mdfuse() { # LOGFILE [--bitmap FILE] LEGS... MNT  (BIN=binary, default $MDFUSE)
    local logf=$1; shift
    local bin=${BIN:-$MDFUSE}
    # --transport dev-fuse unless the caller says otherwise (the switch
    # may be on for this run: auto would take the rings); a binary from
    # before the option has only /dev/fuse.
    local transport=(--transport dev-fuse)
    case " $* " in *" --transport "*) transport=() ;; esac
    "$bin" mount --help 2>/dev/null | grep -q -- --transport || transport=()
    "$bin" mount --threads "$THREADS" --log "$logf" "${transport[@]}" "$@" >/dev/null ||
        die "mdfuse mount: $(tail -5 "$logf")"
    local pid
    pid=$(daemon_pid "$logf")
    [ -n "$pid" ] && PIDS+=("$pid")
    local mnt=${*: -1}
    local bdi=/sys/class/bdi/$(mountpoint -d "$mnt")
    if [ -n "${BDI_MAX_RATIO:-}" ] && [ -d "$bdi" ]; then
        echo "$BDI_MAX_RATIO" > "$bdi/max_ratio"
        [ -e "$bdi/strict_limit" ] && echo 0 > "$bdi/strict_limit"
    fi
    grep . "$bdi"/max_ratio "$bdi"/strict_limit "$bdi"/read_ahead_kb > "$logf.bdi" 2>/dev/null || true
}

stop_mdfuse() { "$MDFUSE" stop "$1" >/dev/null || die "mdfuse stop $1"; }

# ---------------------------------------------------------------- the four targets
TARGET_READ[raw]=$RAW0
TARGET_WRITE[raw]="$RAW0 $RAW1"

log "mdfuse create --bitmap"
"$MDFUSE" create --force --bitmap "$BMFS/array.bitmap" "$BM0" "$BM1" > "$OUT/create.txt"
mount_mdfuse "$OUT/mdfuse-bitmap.log" --bitmap "$BMFS/array.bitmap" "$BM0" "$BM1" "$MNT_BM"
TARGET_READ[mdfuse_bitmap]=$MNT_BM/array.img
TARGET_WRITE[mdfuse_bitmap]=$MNT_BM/array.img
TARGET_PID[mdfuse_bitmap]=$(daemon_pid "$OUT/mdfuse-bitmap.log")

if [ -n "$URING_OLD" ]; then
    echo Y > "$URING_PARAM"
    log "mdfuse create --bitmap (FUSE over io_uring)"
    "$MDFUSE" create --force --bitmap "$BMFS/array-uring.bitmap" "$BU0" "$BU1" >> "$OUT/create.txt"
    mount_mdfuse "$OUT/mdfuse-bitmap-uring.log" --transport uring --bitmap "$BMFS/array-uring.bitmap" \
        "$BU0" "$BU1" "$MNT_BU"
    TARGET_READ[mdfuse_bitmap_uring]=$MNT_BU/array.img
    TARGET_WRITE[mdfuse_bitmap_uring]=$MNT_BU/array.img
    TARGET_PID[mdfuse_bitmap_uring]=$(daemon_pid "$OUT/mdfuse-bitmap-uring.log")
fi

if [ -n "$BASELINE" ]; then
    log "baseline create --bitmap ($BASELINE)"
    "$BASELINE" create --force --bitmap "$BMFS/baseline.bitmap" "$BB0" "$BB1" >> "$OUT/create.txt"
    BIN=$BASELINE mount_mdfuse "$OUT/baseline-bitmap.log" --bitmap "$BMFS/baseline.bitmap" "$BB0" "$BB1" "$MNT_BB"
    TARGET_READ[baseline_bitmap]=$MNT_BB/array.img
    TARGET_WRITE[baseline_bitmap]=$MNT_BB/array.img
    TARGET_PID[baseline_bitmap]=$(daemon_pid "$OUT/baseline-bitmap.log")
fi

if [ ${#REMOTE_LEGS[@]} -gt 0 ]; then
    # One leg local, one on qemu-nbd (O_DIRECT on its image, as the local
    # leg is) over a Unix socket: the NBD client's cost without a network's.
    RSOCK=$WORK/remote.sock
    log "mdfuse create --bitmap (a local leg and an NBD leg)"
    qemu-nbd -f raw -x leg1 -t --cache=none --aio=threads --fork \
        --pid-file="$OUT/qemu-nbd.pid" -k "$RSOCK" "$RM1" || die "qemu-nbd"
    PIDS+=("$(cat "$OUT/qemu-nbd.pid")")
    RURI="nbd+unix:///leg1?socket=$RSOCK"
    "$MDFUSE" create --force --bitmap "$BMFS/remote.bitmap" "$RM0" "$RURI" >> "$OUT/create.txt"
    mount_mdfuse "$OUT/mdfuse-remote.log" --bitmap "$BMFS/remote.bitmap" "$RM0" "$RURI" "$MNT_RM"
    TARGET_READ[mdfuse_remote]=$MNT_RM/array.img
    TARGET_WRITE[mdfuse_remote]=$MNT_RM/array.img
    TARGET_PID[mdfuse_remote]=$(daemon_pid "$OUT/mdfuse-remote.log")
fi

log "mdfuse create (no bitmap)"
"$MDFUSE" create --force "$NB0" "$NB1" >> "$OUT/create.txt"
mount_mdfuse "$OUT/mdfuse-nobitmap.log" "$NB0" "$NB1" "$MNT_NB"
TARGET_READ[mdfuse_nobitmap]=$MNT_NB/array.img
TARGET_WRITE[mdfuse_nobitmap]=$MNT_NB/array.img

QIMG=$WORK/qemu.img
touch "$QIMG"
AIO=io_uring
qsd_start() {
    local aio=$1
    local child0 child1
    child0="{\"driver\":\"file\",\"node-name\":\"leg0\",\"filename\":\"$Q0\",\"cache\":{\"direct\":true},\"aio\":\"$aio\"}"
    child1="{\"driver\":\"file\",\"node-name\":\"leg1\",\"filename\":\"$Q1\",\"cache\":{\"direct\":true},\"aio\":\"$aio\"}"
    qemu-storage-daemon \
        --blockdev "{\"driver\":\"quorum\",\"node-name\":\"mirror\",\"vote-threshold\":1,\"read-pattern\":\"fifo\",\"children\":[$child0,$child1]}" \
        --export "type=fuse,id=exp0,node-name=mirror,mountpoint=$QIMG,writable=on" \
        > "$OUT/qsd.log" 2>&1 &
    QSD_PID=$!
    PIDS+=("$QSD_PID")
    for _ in $(seq 50); do
        grep -q " $QIMG fuse" /proc/mounts && return 0
        kill -0 "$QSD_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
if ! qsd_start io_uring; then
    log "qemu-storage-daemon with aio=io_uring failed ($(tail -1 "$OUT/qsd.log")); trying aio=threads"
    kill "$QSD_PID" 2>/dev/null || true
    AIO=threads
    qsd_start threads || die "qemu-storage-daemon: $(cat "$OUT/qsd.log")"
fi
TARGET_READ[qemu_quorum]=$QIMG
TARGET_WRITE[qemu_quorum]=$QIMG

run_all_targets

cat "$MNT_BM/mdstat" > "$OUT/mdfuse_bitmap.mdstat" || true
stop_mdfuse "$MNT_BM"
stop_mdfuse "$MNT_NB"
[ -n "$BASELINE" ] && { "$BASELINE" stop "$MNT_BB" >/dev/null || die "baseline stop $MNT_BB"; }
[ ${#REMOTE_LEGS[@]} -gt 0 ] && stop_mdfuse "$MNT_RM"
if [ -n "$URING_OLD" ]; then
    stop_mdfuse "$MNT_BU"
    grep -h "FUSE over io_uring" "$OUT/mdfuse-bitmap-uring.log" >&2 || true
    restore_uring
fi
umount "$QIMG" 2>/dev/null || true
kill "$QSD_PID" 2>/dev/null || true
wait "$QSD_PID" 2>/dev/null || true
rm -f "$RAW0" "$RAW1" "$BM0" "$BM1" "$NB0" "$NB1" "$Q0" "$Q1" "${URING_LEGS[@]}" "${BASELINE_LEGS[@]}" "${REMOTE_LEGS[@]}"

# ---------------------------------------------------------------- start-up and memory, 1 TiB
log "start-up: 1 TiB sparse array"
BIG0=$WORK/big0.leg
BIG1=$WORK/big1.leg
truncate -s 1T "$BIG0" "$BIG1"
"$MDFUSE" create --force --bitmap "$BMFS/big.bitmap" "$BIG0" "$BIG1" > "$OUT/big-create.txt"
t0=$(date +%s.%N)
mount_mdfuse "$OUT/mdfuse-big.log" --bitmap "$BMFS/big.bitmap" "$BIG0" "$BIG1" "$MNT"
t1=$(date +%s.%N)
BIGPID=$(daemon_pid "$OUT/mdfuse-big.log")
grep -E 'Vm(RSS|HWM)' "/proc/$BIGPID/status" > "$OUT/big.mem.idle"
threads_big=$(ls "/proc/$BIGPID/task" | wc -l)
# Some I/O spread over the whole 1 TiB: 4 KiB random writes then reads.
fio --output-format=json --name=big --filename="$MNT/array.img" --rw=randrw --rwmixread=50 --bs=4k \
    --ioengine=libaio --iodepth=16 --direct=1 --time_based --runtime=5 --norandommap --randrepeat=0 \
    --thread > "$OUT/big.fio.json" 2>"$OUT/big.fio.err" || die "fio on the 1 TiB array"
grep -E 'Vm(RSS|HWM)' "/proc/$BIGPID/status" > "$OUT/big.mem.io"
stop_mdfuse "$MNT"
echo "$t0 $t1 $threads_big" > "$OUT/big.mount"

# ---------------------------------------------------------------- recovery
# Re-add after 1% of the chunks went dirty (bitmap-guided) vs a full
# recovery of the same array (no bitmap) vs a raw copy of one leg's data
# region to the other's. Own legs of REC_LEG_SIZE (4G): a re-add has fixed
# costs (superblocks and the bitmap header written with a flush, before and
# after the copy, about 15 ms here), which on a 1 GiB array would be half of
# the 3% it is allowed. The array is written in full through mdfuse first,
# so both legs hold data (create punches the data regions to holes), and
# md's sync_speed_max (200 MB/s) is lifted: nothing else runs.
REC_LEG_SIZE=${REC_LEG_SIZE:-4G}
RLEG0=$WORK/rec-leg0.img
RLEG1=$WORK/rec-leg1.img
seconds_since() { awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN { printf "%.3f", a - b }'; }
fill_array() { # MNT: writes the whole array once
    dd if=/dev/zero of="$1/array.img" bs=1M oflag=direct conv=notrunc status=none 2>/dev/null || true
}
wait_idle() { # MNT: polls md's sync_action every 10 ms (mdfuse wait polls once a second)
    while [ "$(cat "$1/md/sync_action")" != idle ]; do sleep 0.01; done
}
recover_leg1() { # MNT: fail, remove, (dirty 1% with a bitmap), re-add; prints the recovery's seconds
    local mnt=$1
    echo 100000000 > "$mnt/md/sync_speed_max"
    "$MDFUSE" manage "$mnt" --fail "$RLEG1" >/dev/null || die "manage --fail"
    "$MDFUSE" manage "$mnt" --remove "$RLEG1" >/dev/null || die "manage --remove"
    if [ "$(cat "$mnt/md/bitmap/location")" != none ]; then
        local chunk chunks n
        chunk=$(cat "$mnt/md/bitmap/chunksize")
        chunks=$(( $(stat -c %s "$mnt/array.img") / chunk ))
        n=$(( chunks / 100 ))
        # One 4 KiB write in every 100th chunk: 1% of the chunks dirty.
        for i in $(seq 0 $((n - 1))); do
            dd if=/dev/urandom of="$mnt/array.img" bs=4k count=1 seek=$(( i * 100 * chunk / 4096 )) \
                conv=notrunc oflag=direct status=none
        done
        echo "$n $chunks $chunk" > "$OUT/recovery.dirty"
    fi
    local t0
    t0=$(date +%s.%N)
    "$MDFUSE" manage "$mnt" --re-add "$RLEG1" >/dev/null || die "manage --re-add"
    wait_idle "$mnt"
    seconds_since "$t0"
}
log "recovery: 2 x $REC_LEG_SIZE legs"
for l in "$RLEG0" "$RLEG1"; do fallocate -l "$REC_LEG_SIZE" "$l"; done
log "recovery: re-add with 1% of chunks dirty (bitmap)"
"$MDFUSE" create --force --delay 1 --bitmap "$BMFS/rec.bitmap" "$RLEG0" "$RLEG1" >> "$OUT/create.txt"
mount_mdfuse "$OUT/mdfuse-rec-bitmap.log" --bitmap "$BMFS/rec.bitmap" "$RLEG0" "$RLEG1" "$MNT"
fill_array "$MNT"
sleep 3 # the fill's bits clear (--delay 1)
t_readd=$(recover_leg1 "$MNT")
stop_mdfuse "$MNT"
log "recovery: full recovery (no bitmap), and a raw copy first"
"$MDFUSE" create --force "$RLEG0" "$RLEG1" >> "$OUT/create.txt"
mount_mdfuse "$OUT/mdfuse-rec-full.log" "$RLEG0" "$RLEG1" "$MNT"
array_bytes=$(stat -c %s "$MNT/array.img")
fill_array "$MNT"
stop_mdfuse "$MNT"
# The raw copy of the data region (md's data offset, as create printed it),
# O_DIRECT, 1 MiB blocks, a final fsync; the legs hold what the fill wrote,
# as the recovery below finds them.
offset_mib=$(( $(sed -n 's/.*data offset \([0-9]*\) sectors.*/\1/p' "$OUT/create.txt" | tail -1) / 2048 ))
drop_caches
t0=$(date +%s.%N)
dd if="$RLEG0" of="$RLEG1" bs=1M skip="$offset_mib" seek="$offset_mib" count=$(( array_bytes / 1048576 )) \
    iflag=direct oflag=direct conv=notrunc,fsync status=none
t_raw=$(seconds_since "$t0")
mount_mdfuse "$OUT/mdfuse-rec-full.log" "$RLEG0" "$RLEG1" "$MNT"
drop_caches
t_full=$(recover_leg1 "$MNT")
stop_mdfuse "$MNT"
echo "$t_readd $t_full $t_raw $array_bytes" > "$OUT/recovery.times"
rm -f "$RLEG0" "$RLEG1"

# ---------------------------------------------------------------- report
mkdir -p "$(dirname "$RESULT")"
python3 "$HERE/report.py" "$OUT" "$RESULT" \
    --runtime "$RUNTIME" --io-size "$IO_SIZE" --leg-size "$LEG_SIZE" --threads "$THREADS" \
    --work "$WORK" --fstype "$fstype" --qemu-aio "$AIO" \
    --mdfuse-rev "$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --baseline "$BASELINE" --baseline-rev "$([ -n "$BASELINE" ] && git -C "$(dirname "$BASELINE")" rev-parse --short HEAD 2>/dev/null)"
log "results: $RESULT"
