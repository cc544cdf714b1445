# Semantic FPN 80k with BiFormer-B on ADE20K (official: 49.9 mIoU). Drop path 0.3.
_base_ = ['./fpn_biformer-s_4xb8-80k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='visattn://biformer_base')),
    neck=dict(in_channels=[96, 192, 384, 768]))
