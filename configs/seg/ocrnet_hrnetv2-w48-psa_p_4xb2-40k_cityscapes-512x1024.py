# OCRNet + HRNetV2-W48 with parallel Polarized Self-Attention (PSA_p) on Cityscapes, 40k iterations at 512x1024.
# As the PSA_s config, with PSA_p in every stage 2-4 BasicBlock (official PSA_p result: 86.95 mIoU val, with the
# official recipe, not this one).
_base_ = ['./ocrnet_hrnetv2-w48-psa_s_4xb2-40k_cityscapes-512x1024.py']

model = dict(
    backbone=dict(layout='parallel', init_cfg=dict(type='Pretrained', checkpoint='visattn://hrnet_w48_psa')))
