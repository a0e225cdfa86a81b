# Serial Console Lab. Every target sets up what it needs from nothing:
# system packages (apt-get when root, else the exact command to run), the virtual
# environment, and the guest image.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# the portal: web/ built into gateway/portal/dist by esbuild, from the pinned npm packages
PORTAL := gateway/portal/dist/index.html
NODE_MODULES := web/node_modules/.package-lock.json
# command:debian-package pairs, checked by tools/sysdeps.sh
QEMU_DEPS  := qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils \
	/usr/share/OVMF/OVMF_CODE_4M.fd:ovmf /usr/share/seabios/bios.bin:seabios swtpm:swtpm
TEST_DEPS  := ssh:openssh-client chromium:chromium
NODE_DEPS  := npm:npm
IMAGE_DEPS := dpkg-deb:dpkg apt-get:apt lz4:lz4
# the disk VMs' images (images/disk/build.sh): a Debian root and its disks, with no mount
DISK_DEPS  := mmdebstrap:mmdebstrap mkfs.ext4:e2fsprogs sfdisk:fdisk mcopy:mtools \
	mkfs.vfat:dosfstools grub-mkimage:grub-common qemu-img:qemu-utils unshare:util-linux \
	arch-test:arch-test /usr/share/perl5/Debian/DistroInfo.pm:libdistro-info-perl gpg:gpg
BENCH_DEPS := ser2net:ser2net
# the libvirt backend: the daemon, and what pip needs to build libvirt-python against it
LIBVIRT_DEPS := libvirtd:libvirt-daemon-system virsh:libvirt-clients pkg-config:pkg-config \
	cc:gcc /usr/include/libvirt/libvirt.h:libvirt-dev sshd:openssh-server
LIBVIRT_STAMP := $(VENV)/.libvirt
# az (azure-cli) for its tests, in a venv of its own (tests/support/azcli.py says why)
AZ_REQUIREMENTS := tests/clients/az/requirements.txt
AZ_STAMP := .venv-az/.installed
PYTEST_ARGS ?=
TEST_WORKERS ?= 4
CHECK_WORKERS ?= 4
CHECK_MARKERS := not qemu and not e2e and not browser and not slow
LAB_ARGS ?=

.PHONY: help run-lab run-lab-emulated check test images portal bench lint clean

help:
	@echo "make run-lab           start the default lab and print how to reach it"
	@echo "make run-lab-emulated  the same lab with emulated guests only (no QEMU needed)"
	@echo "make check             the inner loop (under a minute): ruff, unit and emulated-guest tests"
	@echo "make test              the whole suite: unit, emulated guests, QEMU guests, end to end"
	@echo "make images            build the guest images: images/build/linux/ (kernel +"
	@echo "                       initramfs) and images/build/disk/ (Debian Gen1 and Gen2 disks)"
	@echo "make portal            build the browser portal (web/) into gateway/portal/dist/"
	@echo "make bench             run the benchmarks and print their tables"
	@echo "make lint              ruff, the import contracts, mypy (strict on the console core)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed; found " + sys.version.split()[0])'
	@echo "==> virtual environment $(VENV) with the packages of pyproject.toml"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || sh tools/venv-fallback.sh $(PYTHON) $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

$(NODE_MODULES): web/package.json web/package-lock.json
	@sh tools/sysdeps.sh $(NODE_DEPS)
	@echo "==> npm packages of web/package-lock.json"
	@cd web && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(PORTAL): $(NODE_MODULES) web/build.mjs $(wildcard web/src/*)
	@echo "==> portal: web/ -> gateway/portal/dist/"
	@cd web && npm run --silent build >/dev/null

portal: $(PORTAL)

# libvirt-python comes from PyPI, built against the system's libvirt: the venv's Python is
# not necessarily the system's, which Debian's python3-libvirt is built for.
$(LIBVIRT_STAMP): $(STAMP)
	@sh tools/sysdeps.sh $(LIBVIRT_DEPS)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,libvirt]'
	@touch $@

$(AZ_STAMP): $(STAMP) $(AZ_REQUIREMENTS)
	@echo "==> .venv-az: azure-cli for the az tests"
	@$(BIN)/python -c 'from tests.support.azcli import az_python; az_python()'
	@touch $@

images:
	@sh tools/sysdeps.sh $(IMAGE_DEPS) $(DISK_DEPS)
	@sh images/build.sh
	@sh images/disk/build.sh

run-lab: $(STAMP) $(PORTAL)
	@if sh tools/sysdeps.sh $(QEMU_DEPS); then \
		$(MAKE) --no-print-directory images && $(BIN)/serial-console lab run $(LAB_ARGS); \
	else \
		echo "Or run the same lab with emulated guests only:  make run-lab-emulated" >&2; exit 1; \
	fi

run-lab-emulated: $(STAMP) $(PORTAL)
	@$(BIN)/serial-console lab run --emulated $(LAB_ARGS)

# Unit and emulated-guest tests (the import contracts among them: tests/unit/test_layering.py):
# no QEMU, browser, libvirt nor image build (what needs them
# is left out by its marker); the faults and Azure-client suites wait for make test, and
# so does the API fuzzer's plugin (schemathesis: a second of start-up in every worker).
check: $(STAMP)
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/python -m pytest -n $(CHECK_WORKERS) --dist loadgroup -m "$(CHECK_MARKERS)" \
		-p no:schemathesis tests/unit tests/integration $(PYTEST_ARGS)

# Guests spend most of their time waiting, so more workers than cores pays.
test: $(STAMP) $(PORTAL) $(LIBVIRT_STAMP) $(AZ_STAMP) images
	@sh tools/sysdeps.sh $(QEMU_DEPS) $(TEST_DEPS)
	@$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

bench: $(STAMP) $(LIBVIRT_STAMP) images
	@sh tools/sysdeps.sh $(QEMU_DEPS) $(BENCH_DEPS)
	@$(BIN)/python -m tests.bench

lint: $(STAMP)
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/lint-imports --no-cache
	@$(BIN)/mypy
	@$(BIN)/mypy --strict gateway/console gateway/machines

clean:
	rm -rf $(VENV) .venv-labgrid .venv-az images/build .pytest_cache .ruff_cache .mypy_cache web/node_modules gateway/portal/dist
