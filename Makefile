# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv and
# installs what it needs by itself.
.PHONY: demo test venv proto lint bench soak clean

demo: venv
	.venv/bin/probenet demo $(ARGS)

test:
	scripts/test.sh $(ARGS)

venv:
	scripts/setup.sh --venv

proto: venv
	.venv/bin/python scripts/gen_proto.py

lint: venv
	.venv/bin/ruff check .
	.venv/bin/python scripts/typecheck.py

bench: venv
	.venv/bin/python benchmarks/ingest.py
	.venv/bin/python benchmarks/agent_probes.py
	.venv/bin/python benchmarks/scrape.py
	.venv/bin/python benchmarks/fleet.py
	.venv/bin/python benchmarks/detection.py
	.venv/bin/python benchmarks/agent_spool.py

# A soak run (benchmarks/README.md): a real fleet with churn; not part of `make bench`.
MINUTES ?= 30
soak: venv
	.venv/bin/python benchmarks/soak.py --minutes $(MINUTES) $(ARGS)

clean:
	rm -rf .venv .pytest_cache .ruff_cache .mypy_cache *.egg-info
