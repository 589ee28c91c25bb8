# The dev loop; every target calls the same scripts as CI.
.PHONY: build debug test lint bench bench-quick serve clean

build:
	. ci/env.sh && install_project test

debug:
	FTCORE_DEBUG=1 .venv/bin/python setup.py build_ext --inplace --force

test:
	ci/test

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

bench:
	ci/bench

bench-quick:
	ci/bench --quick

serve:
	ci/serve

clean:
	rm -rf build dist *.egg-info ftcore/*.c ftcore/*.so ftcore/*.html bench/results
