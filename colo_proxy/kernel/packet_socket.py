"""The SVM's output on the primary host: an AF_PACKET socket on the forward link; and on
the secondary host, while a switchover needs it, a recorder of the SVM's output.

Chosen as the cheapest path: packet taps run before tc ingress, so the socket gets a copy
of every frame the secondary steers here (whole GSO super-packets, one copy, no verdict to
send back) and `colo_svm_in` then drops the frame before any stack sees it. A second
NFQUEUE would cost a verdict per packet; a BPF ring buffer would add a second copy path
for bulk payload. The only module that opens packet sockets.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass

log = logging.getLogger("colo-proxy")

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23  # the mirrored input we send out on the same link
SO_RCVBUFFORCE = 33
SO_ATTACH_BPF = 50
PACKET_STATISTICS = 6  # struct tpacket_stats {packets, drops}, reset by each read
RECV_BUF = 256 * 1024


@dataclass(frozen=True, slots=True)
class Frame:
    ethertype: int
    payload: bytes  # from the L3 header on


@dataclass
class SocketErrors:
    """Errors a packet socket's reads returned, counted; logged once per burst.

    A link that loses carrier (`ENETDOWN`, a cut cable or `ip link set down`) or any other
    error the kernel reports on the socket (`sk_err`: reported once, by the next read) is
    no reason to stop: the read ends, the loop goes on, and the next frame ends the burst.
    Before, any of them but ENETDOWN ended the proxy. One log line per burst, not per
    error: a flapping link must not flood the log.
    """

    ifname: str
    total: int = 0
    in_burst: bool = False

    def failed(self, exc: OSError) -> None:
        self.total += 1
        if not self.in_burst:
            self.in_burst = True
            name = errno.errorcode.get(exc.errno or 0, "")
            log.warning("packet socket on %s: %s %s (counted; reading on, logged again only "
                        "after a frame arrived)", self.ifname, name, exc.strerror or exc)

    def received(self) -> None:
        self.in_burst = False


class PacketSocket:
    """A packet socket on one interface.

    protocol: ETH_P_ALL taps every frame before tc ingress; a single ethertype gets only
    the frames of that type that tc ingress let through (the carried-flow exchange).
    bpf_filter: a loaded BPF socket filter's descriptor (colo_svm_sock), attached before
    the socket is bound, so no frame ever arrives unfiltered.
    """

    def __init__(self, ifname: str, *, protocol: int = ETH_P_ALL, rcvbuf: int = 16 * 1024 * 1024,
                 bpf_filter: int | None = None) -> None:
        # Protocol 0 until bound: the socket receives nothing yet, on any interface.
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        try:
            self._sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if bpf_filter is not None:
                self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, bpf_filter)
            self._sock.bind((ifname, protocol))
            self._ifname = ifname
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        self.drops = 0  # frames the kernel dropped because our receive buffer was full
        self.errors = SocketErrors(ifname)

    def send(self, ethertype: int, payload: bytes, dst: bytes = b"\xff" * 6) -> None:
        """One frame out on the link (the kernel adds the link's source MAC)."""
        self._sock.sendto(payload, (self._ifname, ethertype, 0, 0, dst))

    def fileno(self) -> int:
        return self._sock.fileno()

    def receive(self, limit: int = 64) -> list[Frame]:
        out: list[Frame] = []
        recv = self._sock.recvfrom
        while len(out) < limit:
            try:
                # recvfrom allocates the bytes object the comparator keeps: one copy.
                data, addr = recv(RECV_BUF)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.errors.failed(exc)
                break
            out.append(Frame(addr[1], data))
        if out and self.errors.in_burst:
            self.errors.received()
        return out

    def receive_from(self, limit: int = 64) -> list[tuple[bytes, bytes]]:
        """(source MAC, payload) of the frames waiting, at most `limit`."""
        out: list[tuple[bytes, bytes]] = []
        while len(out) < limit:
            try:
                data, addr = self._sock.recvfrom(RECV_BUF)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.errors.failed(exc)
                break
            out.append((bytes(addr[4][:6]), data))
        if out and self.errors.in_burst:
            self.errors.received()
        return out

    def read_drops(self) -> int:
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        self.drops += int.from_bytes(raw[4:8], "little")
        return self.drops

    def close(self) -> None:
        self._sock.close()


SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35  # also its control message type, SCM_TIMESTAMPNS
BPF_RET_K = 0x06  # BPF_RET | BPF_K: a classic filter of one instruction, "keep k bytes"


class TapRecorder:
    """The SVM's output on the secondary host, read only while a switchover needs it, and
    frames replayed onto the tap's bridge (service.output_record says why).

    The socket is bound to the SVM's tap from the start (so the loop polls one descriptor
    for the proxy's life) behind a one-instruction filter that keeps nothing: an idle
    recorder costs a filter run per frame in the kernel and no wake-up. `start` swaps in
    a filter that keeps every frame; `stop` swaps the first back and drops what is queued.
    (Binding to protocol 0 again does not stop a packet socket: measured, it went on
    receiving.) Frames the VM sends are incoming on the tap; what the tap sends to the
    VM is outgoing and ignored.
    """

    def __init__(self, tap: str) -> None:
        self.tap = tap
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self._out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self._sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 * 1024 * 1024)
            except PermissionError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
            # Each frame's arrival time (CLOCK_REALTIME), to compare with the hypervisor's
            # stamp on the SVM's resume (service.output_record).
            self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self._keep(False)
            self._sock.bind((tap, ETH_P_ALL))
            self._sock.setblocking(False)
        except BaseException:
            self.close()
            raise
        self.errors = SocketErrors(tap)

    def _keep(self, every: bool) -> None:
        insn = struct.pack("HBBI", BPF_RET_K, 0, 0, 0x40000 if every else 0)
        buf = ctypes.create_string_buffer(insn)
        # struct sock_fprog {unsigned short len; struct sock_filter *filter;}: the kernel
        # copies the program during the call.
        self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                              struct.pack("HL", 1, ctypes.addressof(buf)))

    def fileno(self) -> int:
        return self._sock.fileno()

    def start(self) -> None:
        self._keep(True)

    def stop(self) -> None:
        self._keep(False)
        self.read(1 << 20)

    def read(self, limit: int = 256) -> list[tuple[float, bytes]]:
        """(arrival on this host's wall clock, the frame) of the frames waiting."""
        out: list[tuple[float, bytes]] = []
        while len(out) < limit:
            try:
                data, anc, _flags, _addr = self._sock.recvmsg(RECV_BUF, 64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.errors.failed(exc)
                break
            stamps = [struct.unpack("qq", value[:16]) for level, kind, value in anc
                      if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS
                      and len(value) >= 16]
            # The kernel stamps every frame with the option; the read time only without it.
            out.append((stamps[0][0] + stamps[0][1] / 1e9 if stamps else time.time(), data))
        if out and self.errors.in_burst:
            self.errors.received()
        return out

    def send(self, frame: bytes) -> bool:
        """One whole frame into the tap's bridge, which forwards it by its destination
        MAC as if the tap had brought it; False if the kernel refused it (larger than
        the bridge's MTU: a GSO frame; the link down; the tap in no bridge)."""
        # Looked up now, not at start: on a host the hypervisor's script puts the tap in
        # its bridge after the tap appears, which is when the proxy starts.
        bridge = _master(self.tap)
        if not bridge:
            return False
        try:
            self._out.sendto(frame, (bridge, 0))
        except OSError:
            return False
        return True

    def close(self) -> None:
        self._sock.close()
        self._out.close()


def _master(ifname: str) -> str:
    """The bridge `ifname` is a port of ("" if none)."""
    try:
        return os.path.basename(os.readlink(f"/sys/class/net/{ifname}/master"))
    except OSError:
        return ""
