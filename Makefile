# Serial Console Lab. Every target sets up what it needs from nothing:
# system packages (apt-get when root, else the command to run), the virtual
# environment, and the guest image.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYSPKGS := qemu-system-x86 busybox-static ser2net
PYTEST_ARGS ?=

.PHONY: run-lab test images bench lint sysdeps clean help

help:
	@echo "make run-lab   start the default lab and print how to reach it"
	@echo "make test      run the whole test suite (unit, emulated, QEMU, end to end)"
	@echo "make images    build the Linux guest image (kernel + initramfs) into images/build/"
	@echo "make bench     run the benchmarks and print their tables"
	@echo "make lint      ruff"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed; found " + sys.version.split()[0])'
	@echo "==> virtual environment $(VENV) (Python packages from pyproject.toml)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

sysdeps:
	@sh tools/sysdeps.sh qemu-system-x86_64:qemu-system-x86 dpkg-deb:dpkg cpio:cpio

images: sysdeps
	@sh images/build.sh

run-lab: $(STAMP) images
	@$(BIN)/serial-console lab run $(LAB_ARGS)

test: $(STAMP) images
	@$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) images
	@$(BIN)/python -m tests.bench

lint: $(STAMP)
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) images/build .pytest_cache .ruff_cache
