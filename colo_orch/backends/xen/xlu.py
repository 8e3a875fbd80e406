"""Xen's own configuration parser (libxlutil), called through cffi, with no hypervisor.

`xl` parses a domain configuration file with libxlutil (`xlu_cfg_readdata`: the file's
syntax, the `disk` and `vif` lists) and each disk specification with `xlu_disk_parse`
(the flex grammar of tools/libs/util/libxlu_disk_l.l, where `colo`, `colo-host`, `colo-port`,
`colo-export`, `active-disk` and `hidden-disk` live). Neither needs a libxl context, so they
run here. The vif keys are parsed by `xl` itself (parse_nic_config in tools/xl/xl_parse.c,
not a library), so `colo_orch.backends.xen.domain` checks them against the key list of that file.

The glue below is ours: it calls the libraries and writes the parsed fields as
`key=value` lines. It is compiled once per machine into a cache directory (needs a C
compiler and Debian's libxen-dev); `available()` says whether that worked.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import cache
from pathlib import Path
from typing import Any

HEADER = Path("/usr/include/libxlutil.h")

_CDEF = """
int colo_xlu_disk(const char *spec, char *out, int outlen);
int colo_xlu_config(const char *data, int len, char *out, int outlen);
"""

_SOURCE = r"""
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* open_memstream */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libxl.h>
#include <libxlutil.h>

/* Parser messages go to a memory stream so that Python can show them. */
static int finish(FILE *report, char **buf, size_t *len, char *out, int outlen, int rc) {
    fclose(report);
    if (rc && *len)
        snprintf(out, outlen, "error=%s", *buf);
    free(*buf);
    return rc;
}

static const char *s(const char *v) { return v ? v : ""; }

static int defbool(libxl_defbool b) {
    return libxl_defbool_is_default(b) ? -1 : libxl_defbool_val(b);
}

int colo_xlu_disk(const char *spec, char *out, int outlen) {
    char *buf = NULL; size_t len = 0;
    FILE *report = open_memstream(&buf, &len);
    XLU_Config *cfg = xlu_cfg_init(report, "disk");
    libxl_device_disk d;
    const char *specs[1] = { spec };
    int rc;
    out[0] = 0;
    libxl_device_disk_init(&d);
    rc = xlu_disk_parse(cfg, 1, specs, &d);
    if (!rc)
        snprintf(out, outlen,
                 "vdev=%s\ntarget=%s\nformat=%s\nreadwrite=%d\ncolo=%d\ncolo-host=%s\n"
                 "colo-port=%d\ncolo-export=%s\nactive-disk=%s\nhidden-disk=%s\n",
                 s(d.vdev), s(d.pdev_path), libxl_disk_format_to_string(d.format),
                 d.readwrite, defbool(d.colo_enable), s(d.colo_host), d.colo_port,
                 s(d.colo_export), s(d.active_disk), s(d.hidden_disk));
    libxl_device_disk_dispose(&d);
    xlu_cfg_destroy(cfg);
    return finish(report, &buf, &len, out, outlen, rc);
}

/* The file's syntax, then its disk and vif lists as "disk\t<item>" / "vif\t<item>" lines. */
int colo_xlu_config(const char *data, int datalen, char *out, int outlen) {
    char *buf = NULL; size_t len = 0;
    FILE *report = open_memstream(&buf, &len);
    XLU_Config *cfg = xlu_cfg_init(report, "domain.cfg");
    static const char *const lists[] = { "disk", "vif" };
    int rc, used = 0, i, j, n;
    out[0] = 0;
    rc = xlu_cfg_readdata(cfg, data, datalen);
    for (i = 0; !rc && i < 2; i++) {
        XLU_ConfigList *l;
        const char *item;
        if (xlu_cfg_get_list(cfg, lists[i], &l, &n, 0))
            continue;
        for (j = 0; (item = xlu_cfg_get_listitem(l, j)) != NULL; j++) {
            int w = snprintf(out + used, outlen - used, "%s\t%s\n", lists[i], item);
            if (w < 0 || w >= outlen - used) { rc = ENOSPC; break; }
            used += w;
        }
    }
    xlu_cfg_destroy(cfg);
    return finish(report, &buf, &len, out, outlen, rc);
}
"""


class XluUnavailable(RuntimeError):
    pass


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    tag = hashlib.sha256((_CDEF + _SOURCE).encode()).hexdigest()[:12]
    return Path(base) / "colo" / f"xlu-{tag}"


@cache
def _lib() -> Any:
    if not HEADER.exists():
        raise XluUnavailable(f"{HEADER} missing: install Debian's libxen-dev")
    try:
        cffi: Any = importlib.import_module("cffi")  # untyped: seen through Any
    except ImportError as exc:
        raise XluUnavailable("cffi is not installed") from exc
    out = _cache_dir()
    out.mkdir(parents=True, exist_ok=True)
    built = sorted(out.glob("_colo_xlu*.so"))
    if not built:
        ffi = cffi.FFI()
        ffi.cdef(_CDEF)
        ffi.set_source("_colo_xlu", _SOURCE, libraries=["xlutil", "xenlight"])
        try:
            ffi.compile(tmpdir=str(out), verbose=False)
        except Exception as exc:  # distutils/setuptools raise several kinds
            raise XluUnavailable(f"cannot build the libxlutil glue: {exc}") from exc
        built = sorted(out.glob("_colo_xlu*.so"))
    spec = importlib.util.spec_from_file_location("_colo_xlu", built[0])
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def available() -> bool:
    try:
        _lib()
    except XluUnavailable:
        return False
    return True


class XluError(ValueError):
    """libxlutil refused the input; str() carries its own message."""


def _call(fn: str, *args: Any) -> str:
    mod = _lib()
    buf = mod.ffi.new("char[]", 65536)
    rc = getattr(mod.lib, fn)(*args, buf, 65536)
    text: str = mod.ffi.string(buf).decode()
    if rc:
        raise XluError(f"libxlutil {fn} failed (errno {rc}): {text.removeprefix('error=').strip()}")
    return text


def parse_disk(spec: str) -> dict[str, str]:
    """One disk specification as xl sees it: vdev, target, format, colo fields."""
    text = _call("colo_xlu_disk", spec.encode())
    return dict(line.split("=", 1) for line in text.splitlines())


def parse_config(data: str) -> dict[str, list[str]]:
    """A whole domain configuration file: its `disk` and `vif` list items."""
    raw = data.encode()
    text = _call("colo_xlu_config", raw, len(raw))
    out: dict[str, list[str]] = {"disk": [], "vif": []}
    for line in text.splitlines():
        key, _, item = line.partition("\t")
        out[key].append(item)
    return out
