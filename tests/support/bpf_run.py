"""BPF_PROG_TEST_RUN: one loaded program run by the kernel on one frame, no interface."""

from __future__ import annotations

import ctypes
import struct

NR_BPF, BPF_PROG_TEST_RUN = 321, 10  # x86_64
_libc = ctypes.CDLL(None, use_errno=True)


class ProgRun:
    """Runs the program behind `fd` (bcc's `load_func(...).fd`)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.attr = (ctypes.c_uint8 * 80)()

    def __call__(self, frame: bytes) -> tuple[int, bytes]:
        """The program's return code and the frame as it left (OSError if the kernel
        refuses the run)."""
        out = ctypes.create_string_buffer(len(frame) + 256)
        data = ctypes.create_string_buffer(frame, len(frame))
        ctypes.memset(self.attr, 0, 80)
        struct.pack_into("=IIIIQQ", self.attr, 0, self.fd, 0, len(frame), len(out),
                         ctypes.addressof(data), ctypes.addressof(out))
        if _libc.syscall(NR_BPF, BPF_PROG_TEST_RUN, self.attr, 80) != 0:
            raise OSError(ctypes.get_errno(), "BPF_PROG_TEST_RUN")
        retval, _, size_out = struct.unpack_from("=III", self.attr, 4)
        return retval, out.raw[:size_out]
