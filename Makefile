# The two commands of the README:
#   make demo   set up this host and run the demo (the main job)
#   make test   set up this host and run the whole test suite (what CI runs)
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest

.PHONY: demo test bootstrap build build-xen test-xen unit system test-vm test-standin test-bpf test-host \
	lint bench bench-vms fuzz fuzz-parsers chaos clean

bootstrap:
	bash scripts/bootstrap

# The patched QEMU (about 10 min once) and the guest, cached outside the repo.
build: bootstrap
	$(VENV)/bin/colo-lab build

# The nested Xen lab (docs/xen.md): libxl with COLO, a Xen device model, a dom0 image;
# about 15 min once, cached. Not part of `build` or `test`.
build-xen: build
	$(VENV)/bin/colo-lab build --xen

demo: build
	$(VENV)/bin/colo-lab demo

test: build lint
	COLO_REQUIRE_SYSTEM=1 COLO_REQUIRE_COMPILED=1 $(PYTEST) tests

unit: bootstrap
	$(PYTEST) tests/unit

system: build
	COLO_REQUIRE_SYSTEM=1 $(PYTEST) tests/system

# The kinds of system test (markers in pyproject.toml, set in tests/system/conftest.py):
#   test-vm       the lab's two QEMU VMs (minutes)
#   test-standin  the proxy pair on stand-in VMs (seconds each)
#   test-bpf      the eBPF programs on crafted frames (seconds)
#   test-host     root and host tools only (seconds)
test-vm: build
	COLO_REQUIRE_SYSTEM=1 $(PYTEST) -m vm tests/system

test-standin: bootstrap
	COLO_REQUIRE_SYSTEM=1 $(PYTEST) -m standin tests/system

test-bpf: bootstrap
	COLO_REQUIRE_SYSTEM=1 $(PYTEST) -m bpf tests/system

test-host: build
	COLO_REQUIRE_SYSTEM=1 $(PYTEST) -m host tests/system

# The nested Xen lab's tests (root; the build once, then about 31 min: docs/xen.md).
test-xen: build-xen
	COLO_REQUIRE_SYSTEM=1 COLO_XEN_TESTS=1 $(PYTEST) -m xen tests/system

# 1,000,000 random and mutated frames through the eBPF programs (BPF_PROG_TEST_RUN) and the
# comparator, with a random seed it prints (root; CI runs 20,000 seeded: -m bpf). SEED=N
# repeats a run.
fuzz: bootstrap
	$(PY) -m tests.support.datapath_fuzz --frames 1000000 $(if $(SEED),--seed $(SEED))

# The parsers' fuzz properties (tests/unit/**/test_*_fuzz.py) with 20,000 examples each;
# a property then takes a minute or two, past the suite's 60 s per test.
fuzz-parsers: bootstrap
	HYPOTHESIS_PROFILE=fuzz $(PYTEST) -p no:cacheprovider --timeout 1200 \
		$$(find tests/unit -name 'test_*_fuzz.py' | sort)

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	bash scripts/check-commits

bench: build
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# Each protection mode on the same lab VMs, as ratios to direct (root; about 15 minutes
# under TCG). The table also goes to docs/BENCHMARKS.md. ARGS="--modes direct,qemu-compare".
bench-vms: build
	$(PY) benchmarks/bench_vms.py --rounds 2 --write-doc docs/BENCHMARKS.md $(ARGS)

# A fault campaign of 100 faults against the lab's protected pair, every answer checked
# (root; about an hour under TCG). SEED=N repeats one; FAULTS=N another length. The table
# goes into docs/RELIABILITY.md by hand, with the date, commit and seed it prints.
chaos: build
	$(VENV)/bin/colo-lab chaos --faults $(or $(FAULTS),100) --seed $(or $(SEED),1) \
		--out chaos-$(or $(SEED),1)

clean:
	-for n in $$(ls /run/colo-lab 2>/dev/null); do $(VENV)/bin/colo-lab down --name $$n; done
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build/compare-mypyc build/fastpath-cffi
