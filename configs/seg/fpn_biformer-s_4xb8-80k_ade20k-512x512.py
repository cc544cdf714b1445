# Semantic FPN 80k with BiFormer-S on ADE20K (official: 48.9 mIoU).
# Official settings: n_win 8 at 512x512 crops, drop path 0.15, AdamW lr 2e-4 wd 1e-4, cosine schedule with
# 1000 linear warm-up iterations, 32 images per iteration (8 GPUs x 4), FP16.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py',
]
custom_imports = dict(imports=['visattn.mm'], allow_failed_imports=False)
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)

model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='BiFormerBackbone',
        arch='small',
        n_win=8,
        drop_path_rate=0.15,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='visattn://biformer_small')),
    neck=dict(in_channels=[64, 128, 256, 512]),
    decode_head=dict(num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale=512.0,
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=1000),
    dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=False, begin=1000, end=80000),
]
train_dataloader = dict(batch_size=4)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=8000, max_keep_ckpts=1, save_best='mIoU'))
