# UperNet 160k with BiFormer-B on ADE20K (official: 51.0 mIoU single-scale, 51.7 multi-scale). Drop path 0.4.
_base_ = ['./upernet_biformer-s_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.4,
        init_cfg=dict(checkpoint='visattn://biformer_base')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
