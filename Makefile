# fieldcraft: `make demo` runs the main job on built-in sample data, `make test` runs the tests.
# Both install everything first (torch==2.13.0 CPU wheel when no torch is present, then the
# package with its test extras), so they work on a fresh machine.
PYTHON ?= python3
export OMP_WAIT_POLICY ?= PASSIVE
FC = $(PYTHON) -m fieldcraft
OUT ?= outputs

.PHONY: install demo test bench lint clean

install: .install.stamp

.install.stamp: pyproject.toml
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==2.13.0"
	$(PYTHON) -m pip install -e ".[dev]"
	@# tests/test_viewer.py drives Debian's chromium: installed here when root with apt-get, else that test skips saying why
	-@[ -x /usr/bin/chromium ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "make install: Debian's chromium is not installed (needs root and apt-get): the browser test will skip"
	touch $@

demo: install
	$(FC) fit image sample:camera --size 256 --seconds 20 --out $(OUT)/camera --overwrite
	$(FC) render image $(OUT)/camera --width 1024 --out $(OUT)/camera/superres_4x.png
	@echo "demo outputs: $(OUT)/camera (target.png, reconstruction.png, superres_4x.png, psnr_curve.png, metrics.json)"

test: install
	$(PYTHON) -m pytest

bench: install
	$(PYTHON) bench/image_fit.py

lint: install
	$(PYTHON) -m ruff check src tests bench

clean:
	rm -rf $(OUT) .install.stamp bench/results/*.tmp
