# UperNet 160k with InLine-Swin-T (InLine, NeurIPS 2024). Published (third-party, unverified): 45.57 mIoU vs
# Swin-T 44.51. Recipe of BiFormer-S's UperNet config (AdamW lr 6e-5 wd 0.01, poly, drop path 0.3).
_base_ = ['./upernet_mambaout-t_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='InLineSwinBackbone',
        arch='tiny',
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='visattn://inline_swin_tiny')),
    decode_head=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(optimizer=dict(lr=6e-5))
