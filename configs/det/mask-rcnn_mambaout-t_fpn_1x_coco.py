# Mask R-CNN 1x with MambaOut-Tiny on COCO (paper: 45.1 box AP / 41.0 mask AP, 43 M params, 262 GFLOPs).
# Paper settings: 800x1333, AdamW lr 1e-4, 16 images per iteration, FP16. No official det code was released:
# the rest of the recipe (wd 0.05, no decay on norms, drop path 0.2) is BiFormer-S's Mask R-CNN 1x config.
_base_ = ['./mask-rcnn_biformer-s_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='MambaOutBackbone',
        arch='tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='visattn://mambaout_tiny')),
    neck=dict(in_channels=[96, 192, 384, 576]))
