# OCRNet + HRNetV2-W48 with sequential Polarized Self-Attention (PSA_s) on Cityscapes, 40k iterations at 512x1024.
# mmseg's own OCRNet-HRNetV2-W48 recipe (SGD lr 0.01, poly, 8 images per iteration) with the backbone swapped for
# HRNetV2-W48 + PSA_s in every stage 2-4 BasicBlock (the official hrnetv2.py), initialised from timm's ImageNet
# HRNet-W48 (the PSA modules start untrained). The official PSA result (86.72 mIoU val, PSA_s) used a different,
# much longer recipe (multi-scale attention OCR, RMI loss, Mapillary pre-training, 1024x2048 crops, 175 epochs);
# this config does not reproduce it. An official PSA checkpoint loads into the backbone through init_cfg.
_base_ = ['mmseg::ocrnet/ocrnet_hr48_4xb2-40k_cityscapes-512x1024.py']
custom_imports = dict(imports=['visattn.mm'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='PSAHRNetBackbone',
        arch='w48',
        layout='sequential',
        upsample='bilinear',
        out_indices=(1, 2, 3, 4),
        norm_eval=False,
        init_cfg=dict(type='Pretrained', checkpoint='visattn://hrnet_w48_psa_s')))
