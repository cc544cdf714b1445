# UperNet 160k with MambaOut-Tiny on ADE20K (paper: 47.4 mIoU single-scale, 48.6 multi-scale, 54 M params).
# Paper settings: AdamW lr 1e-4, 16 images per iteration, FP16, 512x512 crops. (No official seg code was
# released; drop path, weight decay and the poly schedule follow the UperNet recipes of Swin/ConvNeXt.)
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['visattn.mm'], allow_failed_imports=False)
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)

model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='MambaOutBackbone',
        arch='tiny',
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='visattn://visattn_mambaout_tiny')),
    decode_head=dict(in_channels=[96, 192, 384, 576], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=160000),
]
train_dataloader = dict(batch_size=2)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=16000, max_keep_ckpts=1, save_best='mIoU'))
