# UperNet 160k with InLine-CSwin-T on ADE20K (InLine, NeurIPS 2024; no segmentation number published for it).
# Recipe of CSWin-T's official UperNet config (microsoft/CSWin-Transformer segmentation/configs/cswin/
# upernet_cswin_tiny.py; CSWin-T: 49.3 mIoU, 50.7 multi-scale): AdamW lr 6e-5, wd 0.01, no decay on norms, drop
# path 0.3, poly schedule (power 1) with 1500 linear warm-up iterations, 16 images per iteration (8 GPUs x 2),
# 512x512 crops; FP16 as the other configs. Those are BiFormer-S's UperNet settings too, which this derives from.
_base_ = ['./upernet_biformer-s_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='InLineCSwinBackbone',
        arch='tiny',
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='visattn://inline_cswin_tiny')),
    decode_head=dict(in_channels=[64, 128, 256, 512]))
