# MedSeg — `make up` starts the whole local stack, `make test` runs the test suite.
# Both install what they need on a fresh machine.
SHELL := /bin/bash
PY_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
GEN := build/gen
TS_JAR = $(shell $(PY) -c "import ts, os; print(os.path.join(os.path.dirname(ts.__file__), 'frontend', 'model-server.jar'))")

.PHONY: up down test audit protos bytecode assets bench soak lint train cv k8s-organs ablation system-deps test-deps clean-gen \
	screenshots

# --- installation -----------------------------------------------------------------------------
system-deps:
	@command -v java >/dev/null 2>&1 || { echo "installing Java 17 (TorchServe needs it)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null; }
	@# the local PACS (tools/pacs_server.py); the package's own system service is switched off: `make up` runs
	@# Orthanc with MedSeg's configuration on 127.0.0.1:8042, which that service would hold
	@{ command -v Orthanc >/dev/null 2>&1 || test -x /usr/sbin/Orthanc; } && test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so || { \
	  echo "installing Orthanc and its DICOMweb plugin (the local PACS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null; \
	  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now orthanc >/dev/null 2>&1 || true; fi; }

# Only the tests need these: the database tests run on PostgreSQL too, the UI tests drive Chromium.
test-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "installing PostgreSQL (database tests run on it too)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { echo "installing Chromium (tests/web drive it with Playwright)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@fc-list :lang=zh 2>/dev/null | grep -q . || { echo "installing a Chinese font (screenshots of the zh pages)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei >/dev/null; }

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PY_BOOT) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel uv==0.13.9
	@# uv installs what pip would, from the sources pip is configured with (tools/pip_sources.py), ~3× faster
	@# with the bytecode compiled as pip does (where PYTHONDONTWRITEBYTECODE is set, as in CI, nothing else
	@# would write it: every process would compile torch's modules again); pip itself if uv cannot
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) $$($(PY) -m tools.pip_sources) -e '.[dev]' \
	  || $(PIP) install -q -e '.[dev]'
	@# generated gRPC code lives outside the source tree; make it importable from the venv
	@echo "$(CURDIR)/$(GEN)" > $$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/medseg-generated.pth
	@touch $@

# --- generated code ---------------------------------------------------------------------------
# TorchServe's own protos ship inside its frontend jar: extract them, never copy them by hand.
$(GEN)/.stamp: $(STAMP) $(wildcard protos/medseg/v1/*.proto)
	rm -rf $(GEN) build/protos && mkdir -p $(GEN) build/protos/torchserve
	cd build/protos/torchserve && unzip -q -o -j "$(TS_JAR)" proto/inference.proto proto/management.proto
	$(PY) -m tools.protogen --out $(GEN) --torchserve-protos build/protos/torchserve --medseg-protos protos
	@touch $@

protos: $(GEN)/.stamp

# Our own modules' bytecode, for the same reason (the editable install compiles none): each gateway, organ
# worker and trainer process starts ~0.4 s sooner. Only what changed since is compiled again.
bytecode: $(STAMP)
	@$(PY) -m compileall -q -j 0 gateway services trainer common tools >/dev/null

# --- web assets -------------------------------------------------------------------------------
# Bootstrap, Swagger UI (the API docs at /docs), NiiVue (the volume viewer, WebGL2), Chart.js with its date
# adapter (the trend's time axis) and OpenSeadragon (deep zoom of histology tiles) come from the npm registry at
# build time (package-lock.json), never from a CDN at run time: hospital networks are often closed. Each is
# copied as its self-contained browser build.
VENDOR := gateway/web/static/vendor
$(VENDOR)/.stamp: package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "installing Node.js/npm (web assets)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }
	npm ci --no-audit --no-fund --loglevel=error
	rm -rf $(VENDOR) && mkdir -p $(VENDOR)/bootstrap $(VENDOR)/swagger-ui $(VENDOR)/niivue $(VENDOR)/chartjs $(VENDOR)/openseadragon
	cp -r node_modules/bootstrap/dist/css node_modules/bootstrap/dist/js $(VENDOR)/bootstrap/
	cp node_modules/swagger-ui-dist/swagger-ui-bundle.js node_modules/swagger-ui-dist/swagger-ui.css \
	  node_modules/swagger-ui-dist/LICENSE $(VENDOR)/swagger-ui/
	cp node_modules/@niivue/niivue/dist/niivue.umd.js $(VENDOR)/niivue/
	cp node_modules/chart.js/dist/chart.umd.min.js node_modules/chart.js/LICENSE.md $(VENDOR)/chartjs/
	cp node_modules/chartjs-adapter-date-fns/dist/chartjs-adapter-date-fns.bundle.min.js $(VENDOR)/chartjs/
	cp node_modules/openseadragon/build/openseadragon/openseadragon.min.js node_modules/openseadragon/LICENSE.txt \
	  $(VENDOR)/openseadragon/
	@touch $@

assets: $(VENDOR)/.stamp

# --- running ----------------------------------------------------------------------------------
up: system-deps $(STAMP) protos assets bytecode
	$(PY) -m tools.stack up

down:
	@test -x $(PY) && $(PY) -m tools.stack down || echo "nothing to stop (no .venv)"

# --- checks -----------------------------------------------------------------------------------
test: system-deps test-deps $(STAMP) protos assets bytecode audit
	$(VENV)/bin/lint-imports  # the layers (pyproject.toml [tool.importlinter]): fails before an hour of tests
	$(PY) -m pytest -q -p no:cacheprovider --durations=30  # the slowest 30: where the 20-minute budget goes

# Known vulnerabilities in the installed, pinned dependencies (PyPI's JSON API; the local editable package is
# skipped). Accepted ones are listed in .pip-audit-ignore, each with its reason. Packages the service cannot
# look up are listed as skipped; AUDIT_FLAGS=--strict makes that an error too.
IGNORE_VULNS = $(shell awk '!/^[[:space:]]*(\#|$$)/ { printf "--ignore-vuln %s ", $$1 }' .pip-audit-ignore)
audit: $(STAMP)
	@awk '!/^[[:space:]]*(#|$$)/ && NF < 2 { print ".pip-audit-ignore:" NR ": give the reason after " $$1; bad = 1 } \
	  END { exit bad }' .pip-audit-ignore
	$(VENV)/bin/pip-audit --local --skip-editable --vulnerability-service pypi --progress-spinner off \
	  $(IGNORE_VULNS) $(AUDIT_FLAGS)

# Screenshots of every screen in English and Chinese into docs/screenshots/ (linked from the README): a test
# stack with the shipped models, driven by Debian's Chromium at 1280×800 (tools/screenshots.py).
screenshots: system-deps test-deps $(STAMP) protos assets
	$(PY) -m tools.screenshots

lint: $(STAMP)
	$(VENV)/bin/ruff check common gateway services trainer tools tests
	$(VENV)/bin/ruff format --check common gateway services trainer tools tests

bench: system-deps $(STAMP) protos
	$(PY) -m tools.bench
	$(PY) -m tools.study_bench
	$(PY) -m tools.study_bench --organ hippocampus --runs 10

# 500 segmentations at concurrency 16 through HTTP and gRPC against the running stack (or one of its own),
# with errors, p50/p95/p99, throughput and every process's memory; e.g. SOAK_ARGS="--requests 50".
SOAK_ARGS ?=
soak: system-deps $(STAMP) protos
	$(PY) -m tools.soak $(SOAK_ARGS)

# --- models -----------------------------------------------------------------------------------
# An organ is one folder: `make train ORGAN=<organ>` trains by services/<organ>/recipe.yaml (architecture,
# widths, budget minutes, batch size, augmentation, training data) into model-store/<organ>.mar; the
# shipped models were trained with one torch thread each and these settings (see model-store/<organ>.json
# for the run's measured figures). MINUTES=… overrides the recipe's budget.
ORGAN ?=
MINUTES ?=
TRAIN_ARGS ?= --fold 0 --epochs 400 --patience 60 --threads 1

ifneq ($(filter train cv,$(MAKECMDGOALS)),)
ifeq ($(ORGAN),)
$(error name the organ: make $(filter train cv,$(MAKECMDGOALS)) ORGAN=<a folder of services/>)
endif
endif

train: $(STAMP) protos
	$(VENV)/bin/medseg train --organ $(ORGAN) $(TRAIN_ARGS) $(if $(MINUTES),--minutes $(MINUTES)) --out model-store

# The original paper's Table 3 on grouped folds (liver: each variant × each held-out volume, 8 min a run by
# default: two hours on this machine); e.g. ABLATION_ARGS="--only 2 --minutes 5" for one fold.
ABLATION_ARGS ?=
ablation: $(STAMP)
	$(PY) -m trainer.ablation --threads 1 $(ABLATION_ARGS)

# The per-organ Kubernetes manifests (k8s/base/organs/, the organ addresses and the rollout Role), written
# from the organ folders; tests/k8s fails while they are stale.
k8s-organs: $(STAMP)
	$(PY) -m tools.k8s_organs

# Grouped cross-validation of an organ's recipe (trainer.cv): folds never split a patient or volume (liver:
# leave-one-volume-out); CV_MINUTES per fold, one fold at a time on one torch thread. Fold 0 is the shipped
# `make train` run when that run held out the same group(s).
CV_MINUTES ?= 10
cv: $(STAMP)
	$(PY) -m trainer.cv --organ $(ORGAN) --minutes $(CV_MINUTES) --threads 1 \
	  --reuse-shipped --card model-store/$(ORGAN).json

# The older per-organ names, for any organ folder: make train-liver, make cv-cells.
train-%:
	$(MAKE) train ORGAN=$*
cv-%:
	$(MAKE) cv ORGAN=$*
