"""The QEMU patch: every hunk is explained, and it only touches the files it names."""

from __future__ import annotations

import re

from colo_lab.qemu_build import CONFIGURE_FLAGS, PATCH, build_key


def test_patch_touches_only_the_two_defects_and_the_checkpoint_flush() -> None:
    text = PATCH.read_text()
    files = re.findall(r"^\+\+\+ b/(\S+)", text, flags=re.M)
    assert files == ["cpu.c", "include/exec/ram_addr.h", "migration/colo.c", "migration/ram.c",
                     "softmmu/physmem.c"]
    header = text.split("diff -ru", 1)[0]
    whys = ("qemu_savevm_live_state", "tlb_reset_dirty", "TLB_NOTDIRTY", "Defect 1", "Defect 2",
            "Change 3", "tb_flush()", "colo_flush_ram_cache()")
    for why in whys:
        assert why in header


def test_build_key_depends_on_every_input() -> None:
    assert build_key("1:7.2+dfsg-7+deb12u18") != build_key("1:7.2+dfsg-7+deb12u19")
    assert len(build_key("x")) == 16
    assert "--enable-replication" in CONFIGURE_FLAGS
    assert "--enable-gnutls" in CONFIGURE_FLAGS  # TLS credentials (docs/PORTS.md)
