# pubctl: `make test` and `make demo` work on a fresh clone with only Python 3.10+ and the
# PostgreSQL server binaries installed. Without PUBCTL_TEST_DATABASE_URL the tests start
# a throwaway server of their own (as the `postgres` user when run as root).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install test unit lint format revision bench soak demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

# The suite, then the whole flow through the real CLI ending with `pubctl verify`.
test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)
	$(BIN)/python tests/e2e_verify.py

# The unit tier: no database, a few seconds.
unit: $(STAMP)
	$(BIN)/pytest -q tests/unit --hypothesis-profile=quick

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# A new migration script from alembic/script.py.mako, on top of the head, with its
# frozen SQL: what the definition (pubctl/sources.py) changed since the rendered schema
# files, which it renders again:
#   make revision ID=0106 NAME=add_exam_label
revision: $(STAMP)
	@test -n "$(ID)" -a -n "$(NAME)" || { echo "usage: make revision ID=0106 NAME=what_it_does" >&2; exit 2; }
	$(BIN)/python -c "import sys; from alembic import command; from alembic.config import Config; \
		c = Config(); c.set_main_option('script_location', 'alembic'); \
		command.revision(c, message=sys.argv[2], rev_id=sys.argv[1])" "$(ID)" "$(NAME)"
	$(BIN)/python -m pubctl.revision_sql alembic/versions/$(ID)_$(NAME)

# The bench extra (matplotlib) draws bench/write_path.png after the scenarios.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Long fault and load campaigns (make test runs the same tests briefly): many crash
# runs with random SIGKILLs, a minute of writers with the worker running, many
# adversarial runs (isolation levels, key changes, publishing switched off and on,
# backfills), a long ordering campaign through application triggers, and the tripwire
# campaign with a wider set of planted operators and functions; then Schemathesis
# against serve's OpenAPI description, with random examples (SOAK_RUNS * 40 per
# operation) instead of the fixed few of make test. Reports one line per run;
# SOAK_RUNS and SOAK_SECONDS scale it.
SOAK_RUNS    ?= 25
SOAK_SECONDS ?= 60
soak: $(STAMP)
	PUBCTL_CRASH_RUNS=$(SOAK_RUNS) PUBCTL_CRASH_SECONDS=8 PUBCTL_LOAD_SECONDS=$(SOAK_SECONDS) \
	PUBCTL_ADVERSARIAL_RUNS=$(SOAK_RUNS) PUBCTL_ADVERSARIAL_SECONDS=20 \
	PUBCTL_ORDERING_TRANSACTIONS=$$(( $(SOAK_RUNS) * 80 )) PUBCTL_TRIPWIRE_WIDE=1 \
	PUBCTL_OPENAPI_EXAMPLES=$$(( $(SOAK_RUNS) * 40 )) \
		$(BIN)/pytest -s tests/faults/test_crash_campaign.py tests/faults/test_load.py \
		tests/faults/test_adversarial.py tests/faults/test_ordering.py \
		tests/security/test_tripwire.py tests/acceptance/test_openapi.py

demo: $(STAMP)
	$(BIN)/pubctl demo

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
