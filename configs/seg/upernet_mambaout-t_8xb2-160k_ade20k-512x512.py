# UperNet 160k with MambaOut-Tiny on ADE20K (paper: 47.4 mIoU single-scale, 48.6 multi-scale, 54 M params).
# Paper settings: AdamW lr 1e-4, 16 images per iteration, FP16, 512x512 crops. No official seg code was released:
# the rest of the recipe (wd 0.01, poly schedule, drop path 0.3) is BiFormer-S's UperNet config.
_base_ = ['./upernet_biformer-s_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='MambaOutBackbone',
        arch='tiny',
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='visattn://mambaout_tiny')),
    decode_head=dict(in_channels=[96, 192, 384, 576]),
    auxiliary_head=dict(in_channels=384))
optim_wrapper = dict(optimizer=dict(lr=1e-4))
