# Mask R-CNN 1x with HRNetV2p-W18 + sequential PSA (PSA_s) on COCO (the PSA paper publishes no detection number).
# Recipe of mmdet's HRNetV2p-W18 Mask R-CNN 1x (configs/hrnet/mask-rcnn_hrnetv2p-w18-1x_coco.py; without PSA:
# 37.7 box AP / 34.2 mask AP): the four HRNet branches into an HRFPN neck (256 channels),
# SGD lr 0.02, momentum 0.9, wd 1e-4, 500 linear warm-up iterations, steps at epochs 8 and 11, 1333x800,
# 16 images per iteration, BatchNorm statistics frozen (norm_eval), nearest-neighbour fuse upsampling as mmdet's
# HRNet. The backbone starts from timm's ImageNet HRNet-W18; the PSA modules keep their initialisation.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['visattn.mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='PSAHRNetBackbone',
        arch='w18',
        layout='sequential',
        upsample='nearest',
        norm_eval=True,
        out_indices=(1, 2, 3, 4),
        init_cfg=dict(type='Pretrained', checkpoint='visattn://hrnet_w18_psa_s')),
    neck=dict(_delete_=True, type='HRFPN', in_channels=[18, 36, 72, 144], out_channels=256))
default_hooks = dict(checkpoint=dict(max_keep_ckpts=1))
