"""One training engine (:mod:`.fit`) and its tasks (classification, medical segmentation), the model builder,
checkpoints and run logging for tools/train.py and eval.py."""
