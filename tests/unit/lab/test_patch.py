"""The lab QEMU's patches: every hunk is explained, each only touches the files it names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from colo_lab import qemu_build
from colo_lab.qemu_build import (
    CONFIGURE_FLAGS,
    IGNNE_PATCH,
    PATCH,
    PATCHES,
    SVM_PATCH,
    build_key,
)


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


def test_svm_patch_touches_only_vmrun_and_says_each_defect() -> None:
    text = SVM_PATCH.read_text()
    files = re.findall(r"^\+\+\+ b/(\S+)", text, flags=re.M)
    assert files == ["target/i386/tcg/sysemu/svm_helper.c"]
    header, body = text.split("diff -ru", 1)
    for why in ("Defect 1", "exception_index", "apic_ack_edge", "Defect 2", "int_state",
                "15.21.5", "Defect 3", "CPU_INTERRUPT_VIRQ", "flush_area_mask"):
        assert why in header
    # V_IRQ is set under the I/O-thread lock that cpu_interrupt() holds.
    assert "+            qemu_mutex_lock_iothread();" in body
    # Applied after the COLO/TCG patch, whose files it does not touch.
    assert PATCHES.index(SVM_PATCH) == PATCHES.index(PATCH) + 1


def test_ignne_patch_keeps_other_vcpus_off_the_first_cpus_hflags2() -> None:
    text = IGNNE_PATCH.read_text()
    files = re.findall(r"^\+\+\+ b/(\S+)", text, flags=re.M)
    assert files == ["target/i386/tcg/sysemu/fpu_helper.c"]
    header, body = text.split("diff -ru", 1)
    for why in ("cpu_clear_ignne()", "FXRSTOR", "HF2_NPT_MASK", "HF2_GIF_MASK",
                "svm_asm_do_resume+0xa5", "0x200000006", "run CK", "flush_area_mask()"):
        assert why in header
    # The clear is done by the first CPU's thread only; the set is queued on it.
    assert "+    if (current_cpu != first_cpu) {" in body
    assert "async_run_on_cpu(first_cpu, set_ignne_on_cpu, RUN_ON_CPU_NULL);" in body
    assert PATCHES == (PATCH, SVM_PATCH, IGNNE_PATCH)


def test_build_key_changes_with_each_patch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copies = []
    for patch in PATCHES:
        copy = tmp_path / patch.name
        copy.write_bytes(patch.read_bytes())
        copies.append(copy)
    monkeypatch.setattr(qemu_build, "PATCHES", tuple(copies))
    keys = {build_key("v")}
    for copy in copies:
        copy.write_bytes(copy.read_bytes() + b"\n")
        keys.add(build_key("v"))
    assert len(keys) == 1 + len(copies)


def test_build_key_depends_on_every_input() -> None:
    assert build_key("1:7.2+dfsg-7+deb12u18") != build_key("1:7.2+dfsg-7+deb12u19")
    assert len(build_key("x")) == 16
    assert "--enable-replication" in CONFIGURE_FLAGS
    assert "--enable-gnutls" in CONFIGURE_FLAGS  # TLS credentials (docs/PORTS.md)
