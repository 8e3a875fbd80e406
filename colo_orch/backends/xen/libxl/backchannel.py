"""The secondary's back channel of `xl migrate-receive --colo`, decoded: how our secondary
learns that its VM resumed with a new checkpoint.

Theory of operation
-------------------
Facts from xen.git (tools/libs/light/libxl_colo_restore.c, libxl_colo_proxy.c,
libxl_stream_write.c, libxl_sr_stream_format.h, tools/libs/guest/xg_sr_restore.c,
xg_sr_stream_format.h, tools/xl/xl_migrate.c; Xen 4.7 to 4.20):

- With `--userspace-colo-proxy` the secondary's libxl talks to no proxy at all:
  libxl_colo_restore.c calls colo_proxy_setup and colo_proxy_preresume only when
  `!is_userspace_proxy`, and colo_proxy_postresume does nothing. The COLO_CHECKPOINT that
  the primary's libxl sends to its proxy has no twin on the secondary.
- What the secondary does report goes to the primary's libxl on the back channel. Each
  checkpoint: CHECKPOINT_SVM_SUSPENDED once the SVM is suspended; after the state is
  loaded CHECKPOINT_SVM_READY, then the SVM is resumed (colo_resume_vm restores the device
  model and resumes the domain), then CHECKPOINT_SVM_RESUMED (colo_resume_vm_done ->
  colo_write_svm_resumed). After the initial sync: SVM_READY, the SVM is unpaused
  (colo_unpause_svm), SVM_RESUMED. So SVM_RESUMED is the moment the SVM runs the PVM's state:
  the secondary proxy's sequence offsets must become zero (QEMU's twin is the SVM's RESUME).
- The back channel is `xl migrate-receive`'s stdout (main_migrate_receive passes
  STDOUT_FILENO as send_fd). xl first writes its banner `migrate_receiver_banner`; in COLO
  mode nothing else of xl's follows until it exits. libxl writes no stream header on a back
  channel (libxl__stream_write_start returns before it when `back_channel`).
- A record is libxl__sr_rec_hdr {uint32 type, uint32 length}, the body, zero padding up to
  8 bytes (REC_ALIGN). A checkpoint state is type REC_TYPE_CHECKPOINT_STATE (5), length 4,
  body uint32 id. The integers are written from memory, in the writer's byte order; no
  header says otherwise, and we read on the host that writes.
- libxc writes on the same channel: at each checkpoint, once the SVM is suspended (after
  libxl's SVM_SUSPENDED), xg_sr_restore.c's send_checkpoint_dirty_pfn_list writes the
  pages the SVM dirtied, for the primary to send back: a libxc record {uint32 type
  REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST (0xf), uint32 length}, then length / 8 uint64 pfns
  (a multiple of 8: no padding). Seen on Xen 4.17 (nested lab, run G: `type 15 length 0`
  after the first SVM_SUSPENDED), which our first decoder took for an error. It is skipped.

`BackChannelDecoder` is sans-IO: bytes in, checkpoint-state ids out. Anything else on the
channel raises `BackChannelError`: the reader then stops decoding (it never stops
forwarding: the primary's libxl needs every byte).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

BANNER = b"xl migration receiver ready, send binary domain data.\n"  # xl.h
REC_TYPE_CHECKPOINT_STATE = 5
REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST = 0xF  # libxc's record (xg_sr_stream_format.h)
PFN_SIZE = 8
REC_ALIGN = 8
CHECKPOINT_NEW = 0
CHECKPOINT_SVM_SUSPENDED = 1
CHECKPOINT_SVM_READY = 2
CHECKPOINT_SVM_RESUMED = 3
_HDR = struct.Struct("=II")  # native order: see the module docstring
_ID = struct.Struct("=I")


class BackChannelError(ValueError):
    """The back channel carries something libxl's COLO restore side does not write."""


@dataclass
class BackChannelDecoder:
    """xl's banner, then checkpoint-state records and libxc's dirty-pfn lists (skipped);
    a partial record waits for more."""

    buf: bytearray = field(default_factory=bytearray)
    banner_seen: bool = False
    # How many dirty-pfn lists passed, and the pages in the last one: the pages the SVM
    # dirtied since its previous suspend, which the primary sends back from the PVM (runs
    # AC and AD: a page the SVM's device model wrote was not restored).
    dirty_lists: int = 0
    dirty_pfns: int = 0

    def feed(self, data: bytes) -> list[int]:
        self.buf += data
        if not self.banner_seen:
            if not BANNER.startswith(bytes(self.buf[:len(BANNER)])):
                raise BackChannelError(f"not xl's receiver banner: {bytes(self.buf[:64])!r}")
            if len(self.buf) < len(BANNER):
                return []
            del self.buf[:len(BANNER)]
            self.banner_seen = True
        ids: list[int] = []
        while len(self.buf) >= _HDR.size:
            rtype, length = _HDR.unpack_from(self.buf)
            pfns = rtype == REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST and length % PFN_SIZE == 0
            if not pfns and (rtype != REC_TYPE_CHECKPOINT_STATE or length != _ID.size):
                raise BackChannelError(f"record type {rtype} length {length}: neither a "
                                       "checkpoint state nor a dirty-pfn list")
            size = _HDR.size + -(-length // REC_ALIGN) * REC_ALIGN
            if len(self.buf) < size:
                break
            if pfns:
                self.dirty_lists += 1
                self.dirty_pfns = length // PFN_SIZE
                del self.buf[:size]
                continue
            (state,) = _ID.unpack_from(self.buf, _HDR.size)
            if state > CHECKPOINT_SVM_RESUMED:
                raise BackChannelError(f"unknown checkpoint state {state}")
            ids.append(state)
            del self.buf[:size]
        return ids
