# Mask R-CNN 1x with InLine-Swin-T on COCO (InLine, NeurIPS 2024; no detection config or number verified here).
# Recipe of mmdet's Swin-T Mask R-CNN 1x (configs/swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py): AdamW lr 1e-4,
# wd 0.05, no decay on norms and relative position tables, drop path 0.2, 1000 linear warm-up iterations, steps at
# epochs 8 and 11, 1333x800, 16 images per iteration; FP16 as the other configs.
_base_ = ['./mask-rcnn_biformer-s_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='InLineSwinBackbone',
        arch='tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='visattn://inline_swin_tiny')),
    neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'relative_position_bias_table': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
