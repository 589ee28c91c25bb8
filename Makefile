# The dev loop; every target calls the same scripts as CI.
.PHONY: build debug test lint fuzz bench bench-quick serve clean

build:
	. ci/env.sh && install_project test

debug:
	FTCORE_DEBUG=1 .venv/bin/python setup.py build_ext --inplace --force

test:
	ci/test

fuzz:  # a long fuzzing pass over the MQTT decoder and the command parser
	FTSERVER_FUZZ_EXAMPLES=20000 .venv/bin/pytest -p no:cacheprovider \
		tests/protocol/test_codec_fuzz.py tests/unit/test_commands.py -k "fuzz or never or random or garbage or mutat"

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

bench:        # micro + end-to-end scenarios beside their baselines, 5 repetitions (~30 min)
	ci/bench

bench-quick:  # the same, small and 3 repetitions (about 4 min); results in bench/results/
	ci/bench --quick

serve:
	ci/serve

clean:
	rm -rf build dist *.egg-info ftcore/*.c ftcore/*.so ftcore/*.html bench/results
