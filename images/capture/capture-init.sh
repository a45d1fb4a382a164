#!/bin/busybox sh
# /init of Khoi's capture environment (see build.sh): copy this PC's local
# disk into the draft target Khoi gives it, then power off.
B=/bin/busybox
$B mount -t devtmpfs devtmpfs /dev 2>/dev/null
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t tmpfs tmpfs /tmp
# Everything goes to the screen and to the serial console (the lab reads it).
exec </dev/console >/dev/console 2>&1
say() {
  echo "KHOI-CAPTURE: $*"
  # The screen too: /dev/console is the serial port (the last console=).
  [ -c /dev/tty0 ] && echo "KHOI-CAPTURE: $*" > /dev/tty0 2>/dev/null
}
arg() { $B sed -n "s/.* $1=\([^ ]*\).*/\1/p" /tmp/cmdline; }
echo " $($B cat /proc/cmdline) " > /tmp/cmdline
URL=$(arg khoi.capture)
HOSTPORT=$(echo "$URL" | $B sed -n 's#^http://\([^/]*\)/.*#\1#p')

# report VERB BODY: POST to Khoi; prints the answer (first line: ok, refused
# or error). Returns 0 only for ok.
report() {
  # busybox 1.35's static wget crashes with -T: bound it with timeout instead.
  ans=$($B timeout 60 $B wget -q -O - --post-data "$2" "$URL/$1" 2>/tmp/wget.err) || {
    echo "error"; echo "cannot reach Khoi at $HOSTPORT ($($B cat /tmp/wget.err))"; return 1; }
  echo "$ans"
  [ "$(echo "$ans" | $B head -n 1)" = ok ]
}
finish() { # finish MESSAGE: leave it on the screen, then power off
  say "$1"
  say "This PC powers off in 60 seconds."
  $B sync
  $B sleep 60
  $B poweroff -f
}
fail() {
  say "FAILED: $1"
  report fail "reason=$1" >/dev/null
  finish "The capture failed: $1"
}

[ -n "$URL" ] || finish "no khoi.capture= on the kernel command line: boot this through Khoi"
for m in $($B cat /modules/order); do $B insmod /modules/$m 2>/dev/null; done

# ---- network: the NIC and address iPXE used --------------------------------
MAC=$(arg khoi.mac); IP=$(arg khoi.ip); MASK=$(arg khoi.netmask); GW=$(arg khoi.gateway)
IFACE=
i=0
while [ -z "$IFACE" ] && [ $i -lt 100 ]; do
  for n in /sys/class/net/*; do
    [ "$($B cat "$n/address" 2>/dev/null)" = "$MAC" ] && IFACE=$($B basename "$n")
  done
  [ -n "$IFACE" ] || $B sleep 0.1
  i=$((i + 1))
done
[ -n "$IFACE" ] || finish "no network card with MAC $MAC (its driver is missing from the capture environment)"
$B ifconfig lo 127.0.0.1 up
$B ifconfig "$IFACE" "$IP" netmask "${MASK:-255.255.255.0}" up
[ -n "$GW" ] && [ "$GW" != 0.0.0.0 ] && $B route add default gw "$GW" 2>/dev/null
say "network $IFACE $IP, reporting to $HOSTPORT"

# ---- the source disk ------------------------------------------------------
$B sleep 1
SRC=
for d in /sys/block/*; do
  n=$($B basename "$d")
  case "$n" in loop*|ram*|sr*|fd*|dm-*|md*) continue ;; esac
  [ "$($B cat "$d/removable" 2>/dev/null)" = 1 ] && continue
  [ "$($B cat "$d/size")" -gt 0 ] || continue
  sig=$($B dd if=/dev/$n bs=1 skip=510 count=2 2>/dev/null | $B hexdump -e '2/1 "%02x"')
  [ "$sig" = 55aa ] || continue
  SRC=$n; break
done
[ -n "$SRC" ] || fail "no local disk with a partition table was found"
SECTORS=$($B cat /sys/block/$SRC/size)
SIZE=$((SECTORS * 512))
# Partitions as the kernel read them: number start size name (sectors).
: > /tmp/parts
for p in /sys/block/$SRC/$SRC*; do
  [ -f "$p/partition" ] || continue
  echo "$($B cat $p/partition) $($B cat $p/start) $($B cat $p/size) $($B basename $p)" >> /tmp/parts
done
$B sort -n -k2 /tmp/parts > /tmp/parts.sorted
say "source disk /dev/$SRC: $SIZE bytes, $($B wc -l < /tmp/parts.sorted) partition(s)"

# What will be copied: areas outside partitions and non-NTFS partitions raw,
# NTFS partitions their used clusters (ntfsresize's estimate).
is_ntfs() { [ "$($B dd if=/dev/$1 bs=1 skip=3 count=4 2>/dev/null)" = NTFS ]; }
NEED=0
covered=0
while read -r num start len name; do
  if is_ntfs "$name"; then
    used=$(ntfsresize --info --force --no-progress-bar /dev/$name 2>/dev/null |
      $B sed -n 's/.*resize at \([0-9]*\) bytes.*/\1/p' | $B head -n 1)
    [ -n "$used" ] || used=$((len * 512))
    NEED=$((NEED + used))
  else
    NEED=$((NEED + len * 512))
  fi
  covered=$((covered + len))
done < /tmp/parts.sorted
NEED=$((NEED + (SECTORS - covered) * 512))

# ---- the draft target -------------------------------------------------------
ans=$(report begin "size=$SIZE&need=$NEED") || fail "Khoi refused the capture: $(echo "$ans" | $B tail -n +2)"
val() { echo "$ans" | $B sed -n "s/^$1=//p"; }
TARGET=$(val target); PORTAL=$(val portal); PORT=$(val port)
INITIATOR=$(val initiator); USER=$(val user); SECRET=$(val secret)
echo "InitiatorName=$INITIATOR" > /etc/iscsi/initiatorname.iscsi
say "logging in to $TARGET at $PORTAL:$PORT"
before=$($B ls /sys/block)
iscsistart -i "$INITIATOR" -t "$TARGET" -g 1 -a "$PORTAL" -p "$PORT" -u "$USER" -w "$SECRET" \
  >/tmp/iscsistart.log 2>&1 || fail "iSCSI login to Khoi failed: $($B tail -n 2 /tmp/iscsistart.log | $B tr '\n' ' ')"
DST=
i=0
while [ -z "$DST" ] && [ $i -lt 100 ]; do
  for d in $($B ls /sys/block); do
    case " $(echo $before) " in *" $d "*) continue ;; esac
    $B readlink -f /sys/block/$d | $B grep -q /session && DST=$d
  done
  [ -n "$DST" ] || $B sleep 0.1
  i=$((i + 1))
done
[ -n "$DST" ] || fail "the iSCSI disk did not appear after the login"
[ "$($B cat /sys/block/$DST/size)" = "$SECTORS" ] || fail "the draft target has a different size than /dev/$SRC"

# ---- progress: bytes the kernel wrote to the target -----------------------------
written() { echo $(( $($B awk '{print $7}' /sys/block/$DST/stat) * 512 )); }
(
  last=0; t=0
  while :; do
    $B sleep 2
    now=$(written)
    rate=$(( (now - last) / 2 ))
    last=$now
    report progress "done=$now&total=$NEED&rate=$rate" >/dev/null
  done
) &
PROGRESS=$!

# copy SRCDEV DSTDEV OFFSET LENGTH (bytes)
copy() {
  $B dd if=/dev/$1 of=/dev/$2 bs=4M iflag=skip_bytes,count_bytes oflag=seek_bytes \
    skip=$3 seek=$3 count=$4 conv=notrunc 2>/tmp/dd.err || fail "copying /dev/$1 failed: $($B tail -n 1 /tmp/dd.err)"
}
# 1. Everything outside the partitions, raw: MBR or GPT and the boot code
#    before the first partition, gaps, the GPT backup at the end.
pos=0
while read -r num start len name; do
  [ "$start" -gt "$pos" ] && copy $SRC $DST $((pos * 512)) $(((start - pos) * 512))
  end=$((start + len))
  [ "$end" -gt "$pos" ] && pos=$end
done < /tmp/parts.sorted
[ "$SECTORS" -gt "$pos" ] && copy $SRC $DST $((pos * 512)) $(((SECTORS - pos) * 512))
$B sync
$B blockdev --rereadpt /dev/$DST || fail "the kernel could not read the copied partition table"
# 2. The partitions.
while read -r num start len name; do
  part=
  i=0
  while [ -z "$part" ] && [ $i -lt 50 ]; do
    for p in /sys/block/$DST/$DST*; do
      [ "$($B cat $p/partition 2>/dev/null)" = "$num" ] && part=$($B basename $p)
    done
    [ -n "$part" ] && [ -b /dev/$part ] || { part=; $B sleep 0.1; }
    i=$((i + 1))
  done
  [ -n "$part" ] || fail "partition $num of the copy did not appear"
  if is_ntfs "$name"; then
    say "copying NTFS /dev/$name (used clusters only)"
    # --force: a volume marked dirty is still copied, so that Khoi's check of
    # the copy (the image gate's) is the one that decides and explains.
    ntfsclone --overwrite /dev/$part --force /dev/$name >/tmp/ntfsclone.log 2>&1 ||
      fail "ntfsclone of /dev/$name failed: $($B tail -n 2 /tmp/ntfsclone.log | $B tr '\n' ' ')"
  else
    say "copying /dev/$name raw ($((len * 512)) bytes)"
    copy $name $part 0 $((len * 512))
  fi
done < /tmp/parts.sorted
$B sync
$B blockdev --flushbufs /dev/$DST
kill $PROGRESS 2>/dev/null
report progress "done=$(written)&total=$NEED&rate=0" >/dev/null

# ---- the result ---------------------------------------------------------------
ans=$(report done "")
word=$(echo "$ans" | $B head -n 1)
msg=$(echo "$ans" | $B tail -n +2)
case "$word" in
  ok) say "KHOI-CAPTURE-DONE $msg"; finish "Capture finished: $msg" ;;
  refused) say "KHOI-CAPTURE-REFUSED $msg"; finish "$msg" ;;
  *) finish "Khoi could not finish the capture: $msg" ;;
esac
