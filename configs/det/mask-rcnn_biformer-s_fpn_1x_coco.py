# Mask R-CNN 1x with BiFormer-S on COCO (official: 47.8 box AP / 43.2 mask AP; re-run 48.1 / 43.6).
# Official settings: n_win 16 with padding, AdamW lr 1e-4 wd 0.05 (no decay on norms), drop path 0.2,
# steps at epochs 8 and 11, 1333x800, FP16.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
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
    neck=dict(in_channels=[64, 128, 256, 512]))

optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))
default_hooks = dict(checkpoint=dict(max_keep_ckpts=1))
