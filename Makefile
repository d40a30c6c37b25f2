# vlmfleet — every target runs as root on a Debian 12 machine (the lab creates namespaces and containers).
#   make demo   bring up the lab and run the main job (deploys/vlm.py) against it
#   make test   run every test tier (fast + lab); CI runs exactly this
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
# Debian packages the lab and the tests use on this machine (tools, not services: see host-deps)
HOST_PKGS := debootstrap gpg gpg-agent systemd systemd-container apt-cacher-ng docker-registry iptables iproute2 \
             openssh-client zstd curl ca-certificates git prometheus haproxy

# the parser tier: real vLLM parsers (0.33.0 installed from PyPI; 0.8.2's wheel read as source)
VLLM_033 := .cache/vllm-0.33.0
WHEEL_082 := .cache/wheels/vllm-0.8.2-cp38-abi3-manylinux1_x86_64.whl

.PHONY: deps host-deps demo lab lab-status lab-down test test-fast vllm-parsers clean

deps: host-deps $(VENV)/.installed

host-deps:
	@missing=$$(for p in $(HOST_PKGS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "make: installing Debian packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  if [ -d /run/systemd/system ]; then \
	    echo "make: the lab runs its own apt-cacher-ng and registry; disabling the system-wide services"; \
	    systemctl disable --now apt-cacher-ng.service docker-registry.service prometheus.service haproxy.service >/dev/null 2>&1 || true; \
	  fi; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	$(VENV)/bin/pip install -q -e '.[lab,test]' 2>&1 | grep -v '^WARNING: Location' || true
	$(VENV)/bin/vlmfleet --help >/dev/null
	touch $@

demo: deps
	$(VENV)/bin/vlmfleet lab up
	$(VENV)/bin/pyinfra -y inventories/lab.py deploys/vlm.py

lab: deps
	$(VENV)/bin/vlmfleet lab up

lab-status: deps
	$(VENV)/bin/vlmfleet lab status

lab-down: deps
	$(VENV)/bin/vlmfleet lab down

$(VLLM_033)/.installed:
	$(PYTHON) -m venv $(VLLM_033)
	$(VLLM_033)/bin/pip install -q vllm==0.33.0 2>&1 | grep -v '^WARNING: Location' || true
	$(VLLM_033)/bin/python -c 'import vllm; assert vllm.__version__ == "0.33.0"'
	touch $@

$(WHEEL_082):
	$(VENV)/bin/pip download -q --no-deps vllm==0.8.2 -d .cache/wheels 2>&1 | grep -v '^WARNING: Location' || true
	test -f $@

vllm-parsers: deps $(VLLM_033)/.installed $(WHEEL_082)

test: deps vllm-parsers
	$(VENV)/bin/pytest -m 'lab or parser or not (lab or parser)' --durations=30

test-fast: deps
	$(VENV)/bin/pytest

clean: lab-down
	rm -rf $(VENV)
