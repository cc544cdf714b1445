"""What the tests of whole runs share: a run folder's logged quantities."""

import json


def assert_logged(folder, keys) -> None:
    """Every epoch of the run in ``folder`` logged ``keys`` in metrics.json's history and as TensorBoard scalars,
    with values that add up where they are loss parts (checked by the caller), and curves.png exists."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = json.loads((folder / "metrics.json").read_text())["history"]
    missing = [(row["epoch"], k) for row in history for k in keys if k not in row]
    assert not missing, f"not in metrics.json's history: {missing}"
    tags = set(EventAccumulator(str(folder / "tensorboard")).Reload().Tags()["scalars"])
    assert set(keys) <= tags, f"not in TensorBoard: {set(keys) - tags}"
    assert (folder / "curves.png").stat().st_size > 0
