"""Task loops (classification, medical segmentation), checkpoints and run logging for tools/train.py and eval.py."""
