# UperNet 160k with BiFormer-STL (the BiFormer paper's Swin-T-layout ablation model; it publishes ImageNet results
# only, no segmentation number). Recipe of BiFormer-S's official UperNet config: n_win 8 at 512x512 crops, drop path
# 0.3, AdamW lr 6e-5, wd 0.01, no decay on norms, poly schedule with 1500 linear warm-up iterations, 16 images per
# iteration (8 GPUs x 2), FP16.
_base_ = ['./upernet_biformer-s_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='BiFormerBackbone',
        arch='stl',
        n_win=8,
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='visattn://biformer_stl')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
