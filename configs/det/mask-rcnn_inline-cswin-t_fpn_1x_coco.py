# Mask R-CNN 1x with InLine-CSwin-T on COCO (InLine, NeurIPS 2024; no detection number published for it).
# CSWin released no detection config; its paper trains Mask R-CNN 1x with Swin's recipe (CSWin-T: 46.7 box AP /
# 42.2 mask AP), which this is: mmdet's Swin-T Mask R-CNN 1x (AdamW lr 1e-4, wd 0.05, no decay on norms, drop path
# 0.2, 1000 linear warm-up iterations, steps at epochs 8 and 11, 1333x800, 16 images per iteration); FP16.
_base_ = ['./mask-rcnn_inline-swin-t_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='InLineCSwinBackbone',
        arch='tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='visattn://inline_cswin_tiny')),
    neck=dict(in_channels=[64, 128, 256, 512]))
