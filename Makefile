# Two commands do all set-up: `make demo` and `make test`. Both create .venv from the pins when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.visattn-installed
PIP_VERSION := 26.3
OUT ?= runs/demo

.PHONY: demo test lint clean

$(STAMP): pyproject.toml requirements/constraints.txt requirements/gpu-triton.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==$(PIP_VERSION)
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e '.[dev,mm,export]'
	$(PY) -m pip install --quiet --no-deps --upgrade --target $(VENV)/gpu-triton -r requirements/gpu-triton.txt
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
