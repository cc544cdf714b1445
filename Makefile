# Two commands do all set-up: `make demo` and `make test`. Both create .venv from the pins when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.visattn-installed
PIP_VERSION := 26.3
UV_VERSION := 0.13.9
OUT ?= runs/demo

.PHONY: demo test lint clean

# uv (pinned, from PyPI) installs the pins in about half pip's time: parallel downloads, unpacking and bytecode
# compilation (the bytecode matters: with PYTHONDONTWRITEBYTECODE set, a process would otherwise compile torch)
$(STAMP): pyproject.toml requirements/constraints.txt requirements/gpu-triton.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==$(PIP_VERSION) uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --quiet --python $(PY) --compile-bytecode -c requirements/constraints.txt \
		-e '.[dev,mm,export]'
	$(VENV)/bin/uv pip install --quiet --python $(PY) --compile-bytecode --no-deps --target $(VENV)/gpu-triton \
		-r requirements/gpu-triton.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/train.py --demo --output $(OUT) --overwrite
	$(PY) tools/eval.py --checkpoint $(OUT)/best.pth
	$(PY) tools/predict.py $(OUT)/best.pth $(OUT)/samples --output $(OUT)/predict
	$(PY) tools/export.py $(OUT)/best.pth --output $(OUT)/export --check
	$(PY) tools/visualize.py $(OUT)/best.pth $(OUT)/samples/digit_3.png --output $(OUT)/visualize
	@echo "checkpoint: $(OUT)/best.pth  curves: $(OUT)/curves.png  metrics: $(OUT)/metrics.json"
	@echo "predictions: $(OUT)/predict/predictions.csv  ONNX: $(OUT)/export  routing: $(OUT)/visualize/routing.png"

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 -q

clean:
	rm -rf $(VENV) runs
