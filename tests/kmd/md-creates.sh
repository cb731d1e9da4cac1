# Guest scenario for ../shared/kernel-md-rig (tests/interop.rs): md creates several RAID1
# arrays one after another in one boot and leaves each clean, degraded or crashed.
# Disks: bm (ext4 that receives NAME.bitmap), pbase (base pattern), palt (overlay pattern)
# and, per array NAME of ARRAYS, NAME0 and NAME1 (zeroed legs).
# Env: ARRAYS="NAME ..."; per array a variable NAME="METADATA:BITMAP:MODE" with
#      METADATA 1.0|1.1|1.2, BITMAP file|internal|none (file: --bitmap=/mnt/bm/NAME.bitmap;
#      internal: --bitmap=internal, in the legs; 64K chunks either way),
#      MODE clean     create, fill from pbase, overlays, stop
#           degraded  create, fill, (bitmap clean), --fail/--remove leg1, overlays, stop
#           crash     create, fill, (bitmap clean), safe_mode_delay 0, bitmap/time_base 60,
#                     overlays, sync, then an
#                     emergency restart with the array active (only the last array)
#      OVERLAYS="OFF:LEN ..." (bytes, array offsets) written from palt.
# Each array's output follows a line `KMD-PART NAME`: KMD-VAL array_bytes=, offset0= (md's
# dev-*/offset of leg0, sectors), md0_sha256= (read by md at the end), events=; sections
# create, examine-leg0/1, examine-bitmap (after the stop, or before the crash).
. /kmd-common.sh
set -u
mkdir -p /mnt/bm
mount -t ext4 "$(dev bm)" /mnt/bm || fail "mount bm"
write_overlays() {
  local r off len
  for r in $OVERLAYS; do
    off=${r%%:*}; len=${r#*:}
    dd if=/dev/kmd/palt of=/dev/md0 bs=512 skip=$((off/512)) seek=$((off/512)) count=$((len/512)) conv=notrunc 2>/dev/null || fail "overlay $r"
  done
  sync
}
for NAME in $ARRAYS; do
  echo "KMD-PART $NAME"
  eval "SPEC=\${$NAME}"
  IFS=: read META BM MODE <<EOS
$SPEC
EOS
  L0=$(dev ${NAME}0); L1=$(dev ${NAME}1)
  [ -b "$L0" ] && [ -b "$L1" ] || fail "missing legs of $NAME"
  BMF=/mnt/bm/$NAME.bitmap
  case $BM in
    file) BMOPT="--bitmap=$BMF --bitmap-chunk=64K" ;;
    # mdadm -X reads an internal bitmap from a leg.
    internal) BMF=$L0; BMOPT="--bitmap=internal --bitmap-chunk=64K" ;;
    none) BMOPT=--bitmap=none ;;
    *) fail "$NAME: bitmap $BM" ;;
  esac
  sect create mdadm --create /dev/md0 --run --metadata=$META --level=1 --raid-devices=2 \
    $BMOPT --name=$NAME --homehost=kmdrig --assume-clean "$L0" "$L1" || fail "create $NAME"
  SIZE=$(blockdev --getsize64 /dev/md0)
  val array_bytes=$SIZE
  val "metadata_version=$(cat /sys/block/md0/md/metadata_version)"
  val "offset0=$(cat /sys/block/md0/md/dev-${L0##*/}/offset)"
  # The fill's bits cleared in ~2 s instead of ~10 (md's default 5 s daemon), back to 5 after.
  [ "$BM" = none ] || echo 1 > /sys/block/md0/md/bitmap/time_base
  dd if=/dev/kmd/pbase of=/dev/md0 bs=65536 count=$((SIZE/65536)) 2>/dev/null || fail "fill $NAME"
  sync
  if [ "$MODE" != clean ] && [ "$BM" != none ]; then
    wait_bitmap_clean "$BMF" 40 || fail "bitmap of $NAME did not get clean"
  fi
  [ "$BM" = none ] || echo 5 > /sys/block/md0/md/bitmap/time_base
  case $MODE in
    clean) write_overlays ;;
    degraded)
      sect fail-remove mdadm /dev/md0 --fail "$L1" --remove "$L1" || {
        sleep 1; sect remove-retry mdadm /dev/md0 --remove "$L1" || fail "remove"; }
      write_overlays ;;
    crash)
      echo 0 > /sys/block/md0/md/safe_mode_delay
      # No bit of the overlays may be cleared before the crash (TCG is slow).
      [ "$BM" = none ] || echo 60 > /sys/block/md0/md/bitmap/time_base
      write_overlays ;;
    *) fail "$NAME: mode $MODE" ;;
  esac
  val "md0_sha256=$(sha256sum /dev/md0 | cut -d' ' -f1)"
  val "events=$(mdadm -D /dev/md0 | awk '/Events :/{print $3}')"
  if [ "$MODE" = crash ]; then
    dropcaches
    [ "$BM" = none ] || sect examine-bitmap mdadm -X "$BMF"
    sect examine-leg0 mdadm -E "$L0"
    echo "KMD-PART end"
    step "crash: $NAME left active; emergency restart follows"
    touch /tmp/kmd-crash
    exit 0
  fi
  sect stop mdadm --stop /dev/md0 || fail "stop $NAME"
  dropcaches
  sect examine-leg0 mdadm -E "$L0"
  sect examine-leg1 mdadm -E "$L1"
  [ "$BM" = none ] || sect examine-bitmap mdadm -X "$BMF"
done
echo "KMD-PART end"
umount /mnt/bm || fail "umount"
exit 0
