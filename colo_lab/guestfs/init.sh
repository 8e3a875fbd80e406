#!/bin/busybox sh
# PID 1 of the lab guest (busybox initramfs). Loads the virtio drivers the lab
# uses, configures eth0 from the kernel command line (colo.ip=ADDR/PLEN), mounts
# the optional virtio disk, and starts the HTTP service on port 80 and the UDP
# echo service on port 7.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /data
mount -t tmpfs tmpfs /tmp

# modules.order holds the modules in dependency order (written by the lab's builder).
# ata_piix only with colo.disk=sda (the nested Xen lab's IDE disk): on the QEMU lab's pc
# machine it would bind the board's empty IDE channels and probe them.
disk=vda
for arg in $(cat /proc/cmdline); do
    case "$arg" in colo.disk=*) disk="${arg#colo.disk=}" ;; esac
done
# libata without ACPI: it would run the firmware's IDE methods (_GTM, _GTF) for an
# emulated disk that needs none, and a COLO SVM's copy of the ACPI tables has been seen
# to differ from its PVM's ("The DSDT has been corrupted or replaced", run AU).
while read -r mod; do
    [ "$mod" = ata_piix.ko ] && [ "$disk" != sda ] && continue
    args=""
    [ "$mod" = libata.ko ] && args="noacpi=1"
    insmod "/lib/modules/$mod" $args 2>/dev/null || echo "colo-guest: insmod $mod failed"
done < /lib/modules/modules.order

ip=""
ip6=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        colo.ip=*) ip="${arg#colo.ip=}" ;;
        colo.ip6=*) ip6="${arg#colo.ip6=}" ;;
    esac
done
ip link set lo up
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do n=$((n + 1)); usleep 20000; done
# No duplicate address detection and no router solicitations: both replicas own the one
# address, and neither waits on, nor sends, ND traffic of its own timing.
v6=/proc/sys/net/ipv6/conf/eth0
if [ -d "$v6" ]; then
    echo 0 > "$v6/accept_dad"
    echo 0 > "$v6/router_solicitations"
fi
ip link set eth0 up
[ -n "$ip" ] && ip addr add "$ip" dev eth0
[ -n "$ip6" ] && ip -6 addr add "$ip6" dev eth0

# The optional disk holds the key-value store so that disk replication can be
# checked from outside; without it the store lives in tmpfs. The lab formats it (ext4);
# a blank one gets busybox's ext2, which the ext4 driver mounts. An IDE disk appears once
# libata's scan ends, after insmod returned: wait for it (30 s: nested TCG) when asked for.
KV=/tmp/kv
n=0
while [ "$disk" = sda ] && [ ! -b /dev/sda ] && [ $n -lt 1500 ]; do n=$((n + 1)); usleep 20000; done
if [ -b "/dev/$disk" ]; then
    if ! mount -t ext4 "/dev/$disk" /data 2>/dev/null; then
        mke2fs -q "/dev/$disk" >/dev/null 2>&1 && mount -t ext4 "/dev/$disk" /data
    fi
    grep -q ' /data ' /proc/mounts && KV=/data/kv
fi
mkdir -p "$KV"
export KV

# busybox nc forks one child per connection with two or more -l, and uses the
# number of -l as the listen() backlog: 32 of them let 20+ clients connect at
# once without dropped SYNs (a dropped SYN on one replica only is a divergence).
nc -$(printf 'l%.0s' $(seq 32)) -p 80 -e /bin/colo-service &
colo-udp-echo 7 &
echo "colo-guest: service ready ip=$ip ip6=$ip6 kv=$KV"
while true; do sleep 3600; done
