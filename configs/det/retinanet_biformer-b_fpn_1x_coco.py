# RetinaNet 1x with BiFormer-B on COCO (official: 47.1 box AP). Drop path 0.3 as in the official config.
_base_ = ['./retinanet_biformer-s_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='visattn://biformer_base')),
    neck=dict(in_channels=[96, 192, 384, 768]))
