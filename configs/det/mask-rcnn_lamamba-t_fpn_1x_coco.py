# Mask R-CNN 1x with LaMamba-T (visattn's adaptation of LaMamba-Diff's block; no published detection result,
# no pretrained weights). Same recipe as the MambaOut-T config.
_base_ = ['./mask-rcnn_mambaout-t_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='LaMambaBackbone',
        arch='tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[96, 192, 384, 768]))
