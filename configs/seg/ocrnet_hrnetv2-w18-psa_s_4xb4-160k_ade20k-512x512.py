# OCRNet + HRNetV2-W18 with sequential Polarized Self-Attention (PSA_s) on ADE20K, 160k iterations at 512x512.
# mmseg's own OCRNet-HRNetV2-W18 ADE20K recipe (SGD lr 0.01, poly, 16 images per iteration) with the backbone
# swapped for HRNetV2-W18 + PSA_s in every stage 2-4 BasicBlock, initialised from timm's ImageNet HRNet-W18 (the PSA
# modules start untrained). The PSA authors report no ADE20K result.
_base_ = ['mmseg::ocrnet/ocrnet_hr18_4xb4-160k_ade20k-512x512.py']
custom_imports = dict(imports=['visattn.mm'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='PSAHRNetBackbone',
        arch='w18',
        layout='sequential',
        upsample='bilinear',
        out_indices=(1, 2, 3, 4),
        norm_eval=False,
        init_cfg=dict(type='Pretrained', checkpoint='visattn://hrnet_w18_psa_s')))
