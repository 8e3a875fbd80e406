#!/bin/sh
# PID 1 of a nested Xen host's dom0 (init=/sbin/colo-dom0-init; no systemd: it would
# take minutes under TCG). What XEN-NESTED.md found a dom0 needs: the Xen drivers, the
# xen init script (xenstored, xenconsoled), a bridge for guests; then a root shell on
# the console. Kernel command line: colo.name=NAME; colo.ip=ADDR/PLEN on xenbr0, the
# guests' bridge, which holds eth0; colo.ip.IF=ADDR/PLEN for another NIC (all NICs are
# up, with or without an address); colo.route=NET:GW a route. It prints
# "colo-dom0: ready" once `xl info` answers; the lab waits on that line. The project's
# source, when the lab attached it (an ext4 disk labelled colo-src, made per `up`), is
# mounted read-only on /opt/colo and is on the shell's PYTHONPATH.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -o remount,rw /
say() { echo "colo-dom0: $*" > /dev/hvc0; }

name=dom0
ip=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        colo.name=*) name="${arg#colo.name=}" ;;
        colo.ip=*) ip="${arg#colo.ip=}" ;;
    esac
done
hostname "$name"

for m in xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xen-blkback xen-netback \
         bridge tun loop virtio_net virtio_blk \
         br_netfilter nfnetlink_queue xt_NFQUEUE xt_physdev xt_comment sch_ingress cls_bpf; do
    modprobe "$m" 2>/dev/null || say "modprobe $m failed"
done
grep -q xenfs /proc/mounts || mount -t xenfs xenfs /proc/xen

ip link set lo up
ip link add xenbr0 type bridge
ip link set xenbr0 up
for dev in /sys/class/net/eth*; do
    [ -e "$dev" ] && ip link set "${dev##*/}" up
done
ip link set eth0 master xenbr0 || say "no eth0 for xenbr0"
[ -n "$ip" ] && ip addr add "$ip" dev xenbr0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        colo.ip.*=*) dev="${arg#colo.ip.}"; ip addr add "${dev#*=}" dev "${dev%%=*}" ;;
    esac
done
# colo.route=NET:GW: a network reached through a router (the lab's etcd cluster, through
# the host's namespace), after the addresses that make GW reachable. Not a comma: this
# command line is in QEMU's multiboot module list, whose modules commas separate.
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        colo.route=*:*) r="${arg#colo.route=}"; ip route add "${r%%:*}" via "${r#*:}" ||
                        say "no route to ${r%%:*} via ${r#*:}" ;;
    esac
done

if mkdir -p /opt/colo && mount -o ro -L colo-src /opt/colo 2>/dev/null; then
    # Read-only: Python cannot write its bytecode cache there, and need not try.
    export PYTHONPATH=/opt/colo PYTHONDONTWRITEBYTECODE=1
    say "source $(cat /opt/colo/SOURCE 2>/dev/null) on /opt/colo"
fi

/etc/init.d/xen start > /dev/hvc0 2>&1 || say "xen init script failed"
if xl info > /tmp/xl-info 2>&1; then
    say "xl info ok: $(grep -E '^(xen_version|virt_caps)' /tmp/xl-info | tr -s ' ' | tr '\n' ';')"
else
    say "xl info failed: $(tail -n 1 /tmp/xl-info)"
fi
say "ready"

# A root shell on the console, again whenever it exits; PID 1 never returns.
while true; do
    setsid sh -c 'exec sh -i </dev/hvc0 >/dev/hvc0 2>&1'
done
