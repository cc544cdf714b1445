"""benchmarks/reid_cost.py measures every attention kind of the re-id registry, so a kind added there is timed with
no change to the script."""

from benchmarks.reid_cost import PLACEMENTS, REID_CONFIGS
from visattn.tasks.reid.model import REID_ATTENTION


def test_every_registered_kind_at_every_placement_after_the_plain_network():
    label, plain = REID_CONFIGS[0]
    assert plain == {} and "plain" in label
    configs = [config for _, config in REID_CONFIGS[1:]]
    assert len(configs) == len(REID_ATTENTION) * len(PLACEMENTS)
    assert {(c["attn"], c["attn_at"], c["attn_blocks"]) for c in configs} == {
        (kind, stages, blocks) for kind in REID_ATTENTION for stages, blocks in PLACEMENTS}
    assert len({label for label, _ in REID_CONFIGS}) == len(REID_CONFIGS)  # a table row each
