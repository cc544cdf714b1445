# Mask R-CNN 1x with MambaOut-Tiny on COCO (paper: 45.1 box AP / 41.0 mask AP, 43 M params, 262 GFLOPs).
# Paper settings: 800x1333, AdamW lr 1e-4, 16 images per iteration, FP16. (No official det code was released;
# drop path and weight decay follow the BiFormer/ConvNeXt Mask R-CNN recipes.)
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
        type='MambaOutBackbone',
        arch='tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='visattn://visattn_mambaout_tiny')),
    neck=dict(in_channels=[96, 192, 384, 576]))

optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))
default_hooks = dict(checkpoint=dict(max_keep_ckpts=1))
