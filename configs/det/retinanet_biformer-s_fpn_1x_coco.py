# RetinaNet 1x with BiFormer-S on COCO (official: 45.9 box AP; re-run 47.3).
# Official settings: n_win 16 with padding, AdamW lr 1e-4 wd 1e-4, drop path 0.2, 1333x800, FP16 (loss scale 512).
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['visattn.mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='BiFormerBackbone',
        arch='small',
        n_win=16,
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='visattn://biformer_small')),
    neck=dict(in_channels=[64, 128, 256, 512], start_level=1, add_extra_convs='on_input', num_outs=5))

optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale=512.0,
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, weight_decay=1e-4))
find_unused_parameters = True  # FPN starts at stage 2: the stage-1 output norm gets no gradient
default_hooks = dict(checkpoint=dict(max_keep_ckpts=1))
