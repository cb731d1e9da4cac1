# Guest scenario for ../shared/kernel-md-rig (tests/interop.rs): md assembles several RAID1
# arrays one after another in one boot, each as verify-foreign.sh does for one.
# Disks: bm (ext4 holding NAME.bitmap for each array that has a bitmap file) and, per array
# NAME of ARRAYS, NAME0 and NAME1 (its legs, slot order).
# Env: ARRAYS="NAME ..."   RE_ADD_NAMES="NAME ..." (re-add a missing leg and wait, for those)
# Each array's output follows a line `KMD-PART NAME`, with the names verify-foreign's guest
# uses: KMD-VAL assembled= assemble_mode= degraded= degraded_after_sync= mismatch_cnt=
# md0_sha256=; sections examine-legN-before/-after, examine-bitmap-before/-after, assemble,
# mdstat-assembled, detail-final, dmesg-md (the kernel's md lines of this array only);
# examine-bitmap-* read the bitmap file, or leg0's internal bitmap.
. /kmd-common.sh
set -u
mkdir -p /mnt/bm
mount -t ext4 "$(dev bm)" /mnt/bm || fail "mount bm"
dmesg -c > /dev/null
is_active() { [ -e /sys/block/md0/md/array_state ] && case $(cat /sys/block/md0/md/array_state) in clear|inactive) return 1;; *) return 0;; esac; }
for NAME in $ARRAYS; do
  echo "KMD-PART $NAME"
  L0=$(dev ${NAME}0); L1=$(dev ${NAME}1)
  [ -b "$L0" ] && [ -b "$L1" ] || fail "missing legs of $NAME"
  BMF=/mnt/bm/$NAME.bitmap; BMOPT=
  if [ -e "$BMF" ]; then
    BMOPT=--bitmap=$BMF
    # md maps the file with bmap() and refuses holes: make every block real.
    dd if="$BMF" of="$BMF" bs=1024 conv=notrunc 2>/dev/null || fail "densify $BMF"
  fi
  dropcaches
  sect examine-leg0-before mdadm -E "$L0"
  sect examine-leg1-before mdadm -E "$L1"
  # The bitmap mdadm -X reads: the file, or leg0's internal one.
  BMX=
  if [ -n "$BMOPT" ]; then BMX=$BMF
  elif mdadm -E "$L0" 2>/dev/null | grep -q "Internal Bitmap"; then BMX=$L0; fi
  [ -z "$BMX" ] || sect examine-bitmap-before mdadm -X "$BMX"
  MODE=
  if sect assemble mdadm --assemble /dev/md0 $BMOPT "$L0" "$L1" && is_active; then MODE=plain
  else
    [ -e /sys/block/md0 ] && mdadm --stop /dev/md0 >/dev/null 2>&1
    if sect assemble-run mdadm --assemble --run /dev/md0 $BMOPT "$L0" "$L1" && is_active; then MODE=run; fi
  fi
  if [ -z "$MODE" ]; then
    val assembled=no
    sect dmesg-md sh -c 'dmesg -c | grep -E "md|raid1|bitmap"'
    [ -e /sys/block/md0 ] && mdadm --stop /dev/md0 >/dev/null 2>&1
    continue
  fi
  val assembled=yes
  val assemble_mode=$MODE
  val "metadata_version=$(cat /sys/block/md0/md/metadata_version)"
  val "degraded=$(cat /sys/block/md0/md/degraded)"
  val "bitmap_location=$(cat /sys/block/md0/md/bitmap/location 2>&1)"
  sect mdstat-assembled cat /proc/mdstat
  case " ${RE_ADD_NAMES:-} " in *" $NAME "*)
    if [ "$(cat /sys/block/md0/md/degraded)" != 0 ]; then
      for l in "$L0" "$L1"; do
        [ -e "/sys/block/md0/md/dev-${l##*/}" ] || sect "re-add-${l##*/}" mdadm /dev/md0 --re-add "$l"
      done
    fi ;;
  esac
  wait_sync_idle 240 || val sync_wait=TIMEOUT
  val "mismatch_cnt=$(cat /sys/block/md0/md/mismatch_cnt)"
  val "degraded_after_sync=$(cat /sys/block/md0/md/degraded)"
  sect detail-final mdadm -D /dev/md0
  val "md0_sha256=$(sha256sum /dev/md0 | cut -d' ' -f1)"
  sect stop mdadm --stop /dev/md0 || fail "stop $NAME"
  dropcaches
  sect examine-leg0-after mdadm -E "$L0"
  sect examine-leg1-after mdadm -E "$L1"
  [ -z "$BMX" ] || sect examine-bitmap-after mdadm -X "$BMX"
  sect dmesg-md sh -c 'dmesg -c | grep -E "md|raid1|bitmap"'
done
echo "KMD-PART end"
umount /mnt/bm || fail "umount"
exit 0
