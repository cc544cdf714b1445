"""Distillation parts of the classification task: a frozen teacher, its outputs, and the losses of Sparsifiner's
two training phases (Wei et al., CVPR 2023), usable with any student and teacher where they make sense.

- ``reconstruct`` (phase 1): only the connectivity predictors train; loss = w_r * mean over blocks l of
  sum_{b,h,i,j} (A~_l - A_l)^2, with A~_l the predictor's low-rank attention of the patch queries (B, H, N-1, N)
  and A_l the dense teacher's attention rows of the same queries (the model's own dense attention when no
  teacher is given: in this phase its backbone is frozen and runs dense, so it is the teacher's when the student
  starts from the teacher's weights, as in the paper).
- ``distill`` (phase 2): the backbone trains, the predictors are frozen; loss = CE + w_kd * KL(teacher || student)
  on the logits + w_tok * MSE of the final-normed patch tokens against the teacher's.
- A teacher without a phase: CE + w_kd * KL for any student.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...engine.models import build_model
from ...engine.task import complete_checkpoint
from ...errors import UserError
from ...weights import WeightsUnavailable, as_is, load_pretrained, match_classifier, read_file, read_state_dict

PHASES = ("reconstruct", "distill")


def _is_training_checkpoint(obj) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) and isinstance(obj.get("model"), str)


def load_teacher(spec: str, teacher_model: str | None, num_classes: int) -> nn.Module:
    """The frozen teacher in eval mode: ``spec`` is a timm model name (its pretrained weights) or a file, either a
    visattn training checkpoint (it names its model) or bare weights of ``teacher_model``. Its classes must be the
    data's ``num_classes``."""
    if os.path.isfile(spec):
        ckpt = read_file(spec)
        if _is_training_checkpoint(ckpt):
            ckpt = complete_checkpoint(ckpt, spec)
            name = teacher_model or ckpt["model"]
            kwargs = ckpt.get("model_kwargs", {}) if name == ckpt["model"] else {}
            state = ckpt.get("state_dict_ema") or ckpt["state_dict"]
        elif teacher_model:
            name, kwargs, state = teacher_model, {}, read_state_dict(ckpt)
        else:
            raise UserError(f"--teacher {spec} holds bare weights; name their model with --teacher-model NAME")
        teacher = build_model(name, **kwargs)
        state = match_classifier(teacher, state)
        _check_classes(spec, getattr(teacher, "num_classes", None), num_classes)
        load_pretrained(teacher, state, strict=True, filter_fn=as_is, name=f"teacher {spec}")
    elif os.path.splitext(spec)[1] in (".pth", ".pt", ".bin", ".safetensors"):
        raise UserError(f"teacher checkpoint {spec} does not exist")
    else:
        if teacher_model:
            raise UserError(f"--teacher-model names the model of a --teacher FILE; {spec} is a model name")
        try:
            teacher = build_model(spec, pretrained=True)
        except WeightsUnavailable as err:
            raise err.instead(f"--teacher FILE --teacher-model {spec}") from None
        _check_classes(spec, getattr(teacher, "num_classes", None), num_classes)
    teacher.eval().requires_grad_(False)
    return teacher


def _check_classes(spec: str, teacher_classes: int | None, num_classes: int) -> None:
    if teacher_classes != num_classes:
        raise UserError(f"teacher {spec} predicts {teacher_classes} classes, the data has {num_classes}; "
                        f"distil from a teacher trained on these classes")


def teacher_outputs(teacher: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, patch tokens) of the teacher: ``forward_head`` of ``forward_features``, whose tokens after the
    prefix (class token) are the patch tokens (a ViT's; for a CNN these are feature maps)."""
    with torch.no_grad():
        features = teacher.forward_features(images)
        logits = teacher.forward_head(features)
    return logits, features[:, getattr(teacher, "num_prefix_tokens", 0):]


def _attention_modules(teacher: nn.Module) -> list[nn.Module]:
    blocks = getattr(teacher, "blocks", None)
    modules = [getattr(b, "attn", None) for b in blocks] if isinstance(blocks, nn.Sequential | nn.ModuleList) else []
    if not modules or not all(hasattr(m, "qkv") and hasattr(m, "num_heads") and hasattr(m, "scale") for m in modules):
        raise UserError(f"{type(teacher).__name__} has no timm ViT attention blocks (blocks.N.attn.qkv) to take "
                        f"attention maps from; reconstruct without --teacher or with a ViT teacher")
    return modules


def teacher_attention(teacher: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The teacher's softmax attention of every block, (B, H, N, N) each, recorded from its qkv projections
    (timm's ``Attention``: softmax(s q_norm(q) k_norm(k)^T))."""
    maps: list[torch.Tensor] = []

    def record(module: nn.Module, args) -> None:
        x = args[0]
        b, n, _ = x.shape
        qkv = module.qkv(x).reshape(b, n, 3, module.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        q, k = getattr(module, "q_norm", nn.Identity())(q), getattr(module, "k_norm", nn.Identity())(k)
        maps.append(((q.float() * module.scale) @ k.float().transpose(-2, -1)).softmax(-1))

    handles = [m.register_forward_pre_hook(record) for m in _attention_modules(teacher)]
    try:
        with torch.no_grad():
            teacher(images)
    finally:
        for handle in handles:
            handle.remove()
    return maps


def reconstruction_loss(approx: list[torch.Tensor], attention: list[torch.Tensor]) -> torch.Tensor:
    """Mean over blocks of sum((A~ - A[:, :, 1:])^2): A~ (B, H, N-1, N) the predictor's attention of the patch
    queries, A (B, H, N, N) the dense attention (its class-token row dropped)."""
    if len(approx) != len(attention):
        raise UserError(f"the student has {len(approx)} blocks, the teacher {len(attention)}; attention "
                        f"reconstruction needs one teacher block per student block")
    losses = []
    for student, target in zip(approx, attention, strict=True):
        target = target[:, :, 1:].to(student.dtype)
        if student.shape != target.shape:
            raise UserError(f"student attention {tuple(student.shape)} and teacher attention {tuple(target.shape)} "
                            f"differ; use a teacher with the student's heads and tokens")
        losses.append(F.mse_loss(student, target, reduction="sum"))
    return torch.stack(losses).mean()


def logit_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of the class distributions, averaged over the batch."""
    return F.kl_div(F.log_softmax(student.float(), -1), F.log_softmax(teacher.float(), -1), reduction="batchmean",
                    log_target=True)
