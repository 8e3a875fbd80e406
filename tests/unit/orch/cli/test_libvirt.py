"""`coloctl import-libvirt`: a domain XML as virsh dumps it for a KVM guest (qcow2 disk,
bridged virtio NIC) becomes a vm_command and [[disks]] that the orchestrator's loader
takes, and everything it leaves behind is named."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from colo_orch.cli.ctl import main as ctl_main
from colo_orch.cli.libvirt import ImportProblem, convert, toml_document
from colo_orch.core.config import load, parse
from tests.support.paths import REPO

XML = Path(__file__).parent / "data" / "web-kvm.xml"
BASE = REPO / "contrib" / "orch" / "web-primary.toml"


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = ctl_main(["import-libvirt", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_the_whole_config_loads_and_starts_the_domains_vm(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "--xml", str(XML), "--base", str(BASE))
    assert rc == 0, err
    path = tmp_path / "web.toml"
    path.write_text(out)
    cfg = load(path)
    base = load(BASE)
    # The example's host keys stay; the VM's are the domain's.
    assert (cfg.name, cfg.role, cfg.peer_incoming_uri) == (base.name, base.role,
                                                           base.peer_incoming_uri)
    argv = cfg.vm_command
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    for flag, value in (("-accel", "kvm"), ("-machine", "pc-q35-7.2"), ("-cpu", "host"),
                        ("-m", "4096"), ("-smp", "2,sockets=1,cores=2,threads=1"),
                        ("-uuid", "8f3c2a5e-1b7d-4c9e-a2f1-6d0e9b4c7a31")):
        assert argv[argv.index(flag) + 1] == value, flag
    assert "-nodefaults" in argv and argv[argv.index("-display") + 1] == "none"
    # The NIC on the tap colo-proxy watches, with the domain's MAC; the monitors and the
    # pidfile the orchestrator uses; no drive (the orchestrator adds [[disks]] per role).
    assert "tap,id=hn0,ifname=web-tap,script=no,downscript=no,vhost=off" in argv
    assert "virtio-net-pci,netdev=hn0,mac=52:54:00:c0:10:01" in argv
    qmps = [argv[i + 1] for i, a in enumerate(argv) if a == "-qmp"]
    assert qmps == [f"unix:{cfg.qmp},server=on,wait=off",
                    f"unix:{cfg.qmp_events},server=on,wait=off"]
    assert argv[argv.index("-pidfile") + 1] == cfg.vm_pidfile
    assert not {"-drive", "-incoming", "-hda"} & set(argv)
    assert [(d.id, d.image) for d in cfg.disks] == [("disk0", "/var/lib/colo/web-disk0.raw")]
    # What to run first, and what was left behind, in the file and on stderr.
    assert ("qemu-img convert -p -f qcow2 -O raw /var/lib/libvirt/images/web.qcow2 "
            "/var/lib/colo/web-disk0.raw") in out
    for left in ("qcow2", "cdrom", "<graphics>", "<video>", "<memballoon>", "<channel>",
                 "<rng>", "snapshots"):
        assert re.search(rf"^#   - .*{re.escape(left)}", out, re.M), left
        assert "not carried over: " in err and left in err
    assert 'tap = "web-tap", vm_mac = "52:54:00:c0:10:01"' in out


def test_the_snippet_alone_is_valid_toml_of_the_vm_keys(
        capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "--xml", str(XML), "--pair", "db", "--tap", "db-tap",
                      "--qemu", "/opt/qemu/bin/qemu-system-x86_64", "--run-dir", "/run/x")
    assert rc == 0
    keys = tomllib.loads(out)
    assert set(keys) == {"qmp", "qmp_events", "vm_pidfile", "vm_log", "vm_command", "disks"}
    assert keys["vm_command"][0] == "/opt/qemu/bin/qemu-system-x86_64"
    assert keys["qmp"] == "/run/x/db-qmp.sock" and "ifname=db-tap" in " ".join(
        keys["vm_command"])
    # Pasted over the example's VM keys, it loads.
    text = BASE.read_text()
    text = text[:text.index("qmp = ")] + out
    assert parse(text).vm_pidfile == "/run/x/db-qemu.pid"


def _domain(devices: str, *, dom: str = "kvm", extra: str = "") -> str:
    return (f"<domain type='{dom}'><name>t</name><memory unit='MiB'>512</memory>"
            f"<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>{extra}"
            f"<devices>{devices}</devices></domain>")


DISK_RAW = ("<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            "<source file='/images/t.img'/><target dev='sda' bus='sata'/></disk>")
NIC = "<interface type='network'><mac address='52:54:00:00:00:09'/><source network='default'/>" \
      "<model type='e1000'/></interface>"


def test_a_raw_image_is_used_in_place_and_the_bus_change_is_said() -> None:
    imp = convert(_domain(DISK_RAW + NIC + NIC), pair="t")
    assert [d.image for d in imp.disks] == ["/images/t.img"]
    assert not any("qemu-img convert" in c for c in imp.commands)
    assert any("bus 'sata' becomes virtio-blk" in n for n in imp.notes)
    assert "e1000,netdev=hn0,mac=52:54:00:00:00:09" in imp.vm_command
    assert any("colo-proxy compares one NIC" in n for n in imp.notes)
    assert imp.bridge == "the bridge of libvirt network 'default'"
    assert imp.vm_command[imp.vm_command.index("-m") + 1] == "512"
    assert "-cpu" not in imp.vm_command  # no <cpu>: QEMU's default model, as libvirt leaves it


@pytest.mark.parametrize(("devices", "said"), [
    ("<disk type='network' device='disk'><source protocol='rbd' name='p/i'/>"
     "<target dev='vda'/></disk>", "type 'network'"),
    ("<disk type='file' device='disk'><driver type='vmdk'/><source file='/i.vmdk'/>"
     "<target dev='vda'/></disk>", "is vmdk"),
    ("<disk type='file' device='disk'><source file='/s.img'/><target dev='vdb'/>"
     "<shareable/></disk>", "read-only or shared"),
    ("<interface type='direct'><source dev='eth0' mode='bridge'/></interface>", "macvtap"),
    ("<watchdog model='i6300esb'/>", "no watchdog"),
    ("<iommu model='intel'/>", "not known to this import"),
])
def test_what_is_not_carried_is_named(devices: str, said: str) -> None:
    imp = convert(_domain(devices))
    assert any(said in n for n in imp.notes), imp.notes


def test_qemu_commandline_and_on_reboot_are_carried() -> None:
    ns = "http://libvirt.org/schemas/domain/qemu/1.0"
    xml = _domain(DISK_RAW, dom="qemu", extra="<on_reboot>destroy</on_reboot>").replace(
        "<domain ", f"<domain xmlns:qemu='{ns}' ").replace(
        "</domain>", "<qemu:commandline><qemu:arg value='-L'/><qemu:arg value='/fw'/>"
                     "</qemu:commandline></domain>")
    argv = convert(xml).vm_command
    assert argv[argv.index("-accel") + 1] == "tcg" and "-no-reboot" in argv
    assert argv[argv.index("-L") + 1] == "/fw"


@pytest.mark.parametrize(("xml", "said"), [
    (_domain("<hostdev mode='subsystem' type='pci'/>"), "passthrough"),
    (_domain("<filesystem type='mount'/>"), "shared host filesystem"),
    (_domain("", dom="xen"), "only QEMU/KVM"),
    ("<network><name>default</name></network>", "not a libvirt <domain>"),
    ("<domain", "not XML"),
    (_domain("").replace("<memory unit='MiB'>512</memory>", ""), "no <memory>"),
])
def test_a_domain_that_cannot_be_protected_is_refused(xml: str, said: str) -> None:
    with pytest.raises(ImportProblem, match=re.escape(said)):
        convert(xml)


def test_refusal_exits_1_and_writes_nothing(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "d.xml"
    f.write_text(_domain("<hostdev mode='subsystem' type='pci'/>"))
    rc, out, err = _run(capsys, "--xml", str(f))
    assert (rc, out) == (1, "") and "migration blocker" in err


_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
_key = st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True)
_scalar = st.one_of(_text, st.booleans(), st.integers(-2**63, 2**63 - 1),
                    st.floats(allow_nan=False, allow_infinity=False))


@given(st.dictionaries(_key, st.one_of(_scalar, st.lists(_text, max_size=12),
                                       st.lists(st.integers(0, 9), max_size=3)), max_size=6),
       st.dictionaries(_key, _scalar, max_size=3),
       st.lists(st.dictionaries(_key, _text, min_size=1, max_size=3), max_size=2))
def test_toml_document_reads_back_equal(top: dict[str, object], table: dict[str, object],
                                        array: list[dict[str, object]]) -> None:
    data: dict[str, object] = {k: v for k, v in top.items() if k not in ("tbl", "arr")}
    if table:
        data["tbl"] = table
    if array:
        data["arr"] = array
    assert tomllib.loads(toml_document(data)) == data
