"""Task loops (classification now), checkpoints and run logging, used by tools/train.py and tools/eval.py."""
