# Guest scenario for ../shared/kernel-md-rig: dumps every md sysfs attribute of a RAID1
# with a bitmap file (and, last, of one without) at each step of a resync, writes, speed
# limit writes, refused writes, a check and a repair over legs made to differ in 384
# sectors' worth of md's 64 KiB units, a failure, a re-add, a removal and a full recovery.
# It is the evidence for md's formats in docs/design.md ("The operator's interface") and
# the values tests/control.rs expects. Run it from the project root (~1 min under TCG):
#
#   d=$(mktemp -d); truncate -s 32M $d/leg0.img $d/leg1.img; mkfs.ext4 -q -F $d/bm.img 16M
#   ../shared/kernel-md-rig/run.sh -t 500 -l $d/console.log scripts/kmd-sysfs-dump.sh \
#       leg0=$d/leg0.img leg1=$d/leg1.img bm=$d/bm.img
#   grep -a -A80 'KMD-SECTION dump-idle' $d/console.log
. /kmd-common.sh
set -u
L0=$(dev leg0); L1=$(dev leg1)
N0=${L0##*/}; N1=${L1##*/}
MD=/sys/block/md0/md
mkdir -p /mnt/bm; mount -t ext4 "$(dev bm)" /mnt/bm || fail "mount bm"
dump() {
  echo "KMD-SECTION dump-$1"
  for f in $MD/* $MD/bitmap/* $MD/dev-*/*; do
    [ -f "$f" ] || continue
    case $f in */bad_blocks|*/unacknowledged_bad_blocks|*/uevent) continue;; esac
    v=$(cat "$f" 2>&1 | tr '\n' '|')
    echo "${f#$MD/}=$v"
  done
  echo "KMD-ENDSECTION dump-$1 rc=0"
}
try() { # try NAME VALUE FILE
  echo "KMD-SECTION try-$1"
  echo "KMD-CMD echo $2 > $3"
  ( echo "$2" > "$3" ) 2>&1; echo "rc=$?"
  echo "KMD-ENDSECTION try-$1 rc=0"
}
sect create mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 --size=24M \
  --bitmap=/mnt/bm/md0.bitmap --bitmap-chunk=64K "$L0" "$L1" || fail create
sleep 0.3
echo 2000 > $MD/sync_speed_max
sleep 1
dump during-resync
sect mdstat-resync cat /proc/mdstat
echo system > $MD/sync_speed_max
wait_sync_idle 120 || fail "resync"
sleep 1
dump idle
sect ls-md ls -l $MD $MD/bitmap $MD/dev-$N0
sect detail mdadm -D /dev/md0
dd if=/dev/urandom of=/dev/md0 bs=64k count=4 oflag=direct 2>/dev/null
dump after-write
sleep 1
dump after-write-1s
try speedmin-1000 1000 $MD/sync_speed_min
sect speedmin cat $MD/sync_speed_min
try speedmin-5000 5000 $MD/sync_speed_min
sect speedmin5000 cat $MD/sync_speed_min
try speedmin-system system $MD/sync_speed_min
sect speedmin-sys cat $MD/sync_speed_min
try speedmin-0 0 $MD/sync_speed_min
try speedmin-bogus bogus $MD/sync_speed_min
try speedmax-100000 100000 $MD/sync_speed_max
sect speedmax cat $MD/sync_speed_max
echo system > $MD/sync_speed_max
try action-bogus bogus $MD/sync_action
try degraded-ro 1 $MD/degraded
try mismatch-ro 5 $MD/mismatch_cnt
try completed-ro 5 $MD/sync_completed
try uuid-ro 5 $MD/uuid
try state-bogus bogus $MD/dev-$N0/state
try remove-insync remove $MD/dev-$N0/state
try readd-insync re-add $MD/dev-$N0/state
sect read-newdev cat $MD/new_dev
OFF=$(cat $MD/dev-$N1/offset)
sect stop1 mdadm --stop /dev/md0
# 64 KiB at array offset 1 MiB (one unit), 64 KiB at 5 MiB + 4 KiB (spans two units)
dd if=/dev/urandom of="$L1" bs=512 seek=$((OFF + 2048)) count=128 conv=notrunc 2>/dev/null
dd if=/dev/urandom of="$L1" bs=512 seek=$((OFF + 10248)) count=128 conv=notrunc 2>/dev/null
sync
sect assemble mdadm --assemble /dev/md0 --bitmap=/mnt/bm/md0.bitmap "$L0" "$L1" || fail assemble
echo 2000 > $MD/sync_speed_max
echo check > $MD/sync_action
sleep 2
dump during-check
sect mdstat-check cat /proc/mdstat
try check-again check $MD/sync_action
try repair-during repair $MD/sync_action
echo system > $MD/sync_speed_max
wait_sync_idle 120 || fail "check"
dump after-check
echo 2000 > $MD/sync_speed_max
echo repair > $MD/sync_action; sleep 1
dump during-repair
echo system > $MD/sync_speed_max
wait_sync_idle 120 || fail "repair"
dump after-repair
echo check > $MD/sync_action; wait_sync_idle 120
val "mismatch_after_repair_check=$(cat $MD/mismatch_cnt)"
try fail-leg1 faulty $MD/dev-$N1/state
dump after-fail
sect mdstat-failed cat /proc/mdstat
sleep 1
dump after-fail-1s
dd if=/dev/urandom of=/dev/md0 bs=64k count=4 seek=40 oflag=direct 2>/dev/null
sleep 1
dump degraded-after-write
echo 500 > $MD/sync_speed_max
try readd-faulty re-add $MD/dev-$N1/state
sleep 1
dump during-readd
sect mdstat-readd cat /proc/mdstat
echo system > $MD/sync_speed_max
wait_sync_idle 120
dump after-readd
dump after-readd-done
try fail-leg1b faulty $MD/dev-$N1/state
sleep 0.5
try remove-faulty remove $MD/dev-$N1/state
dump after-remove
sect mdstat-removed cat /proc/mdstat
try remove-gone remove $MD/dev-$N1/state
# a full recovery of a blank device through new_dev (major:minor), slowed
sect zero-super mdadm --zero-superblock "$L1"
echo 1000 > $MD/sync_speed_max
sect add mdadm /dev/md0 --add "$L1"
sleep 2
dump during-recovery
sect mdstat-recovery cat /proc/mdstat
echo system > $MD/sync_speed_max
wait_sync_idle 120
dump after-recovery
try fail-leg1c faulty $MD/dev-$N1/state
try fail-last faulty $MD/dev-$N0/state
try remove-last remove $MD/dev-$N0/state
dump after-fail-last
sect stop2 mdadm --stop /dev/md0
# no bitmap, unclean: resync_start and consistency_policy
sect create-nobm mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 --size=24M --bitmap=none "$L0" "$L1" || fail create2
echo 1000 > $MD/sync_speed_max
sleep 3
dump nobitmap-resync
sect mdstat-nobm cat /proc/mdstat
echo idle > $MD/sync_action
sleep 0.5
dump nobitmap-idle
echo system > $MD/sync_speed_max
wait_sync_idle 120
dump nobitmap-done
sect stop3 mdadm --stop /dev/md0
umount /mnt/bm
exit 0
