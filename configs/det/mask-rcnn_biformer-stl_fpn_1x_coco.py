# Mask R-CNN 1x with BiFormer-STL (the BiFormer paper's Swin-T-layout ablation model; it publishes ImageNet results
# only, no detection number). Recipe of BiFormer-S's official Mask R-CNN 1x config (n_win 16 with padding, AdamW
# lr 1e-4, wd 0.05, no decay on norms, drop path 0.2, steps at epochs 8 and 11, 1333x800, FP16).
_base_ = ['./mask-rcnn_biformer-s_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='BiFormerBackbone',
        arch='stl',
        n_win=16,
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='visattn://biformer_stl')),
    neck=dict(in_channels=[96, 192, 384, 768]))
