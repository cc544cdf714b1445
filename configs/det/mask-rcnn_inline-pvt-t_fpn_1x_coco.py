# Mask R-CNN 1x with InLine-PVT-T on COCO (InLine, NeurIPS 2024; number not verified here).
# Recipe of PVT's own Mask R-CNN 1x (whai362/PVT detection/configs/mask_rcnn_pvt_t_fpn_1x_coco.py, PVT-T: 36.7 box
# AP / 35.1 mask AP): mmdet's R50 schedule_1x (500 linear warm-up iterations, steps at epochs 8 and 11) with AdamW
# lr 2e-4, wd 1e-4, drop path 0.1, stage outputs without norms, 1333x800, 16 images per iteration, FP32.
_base_ = ['./mask-rcnn_biformer-s_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='InLinePVTBackbone',
        arch='tiny',
        drop_path_rate=0.1,
        out_norms=False,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='visattn://inline_pvt_tiny')),
    neck=dict(in_channels=[64, 128, 320, 512]))
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4))
