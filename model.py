"""Two-stream ResNet with a PCB part branch: the feature mapping and identity alignment modules of CPL
(Wu et al., "Semi-supervised cross-modality person re-identification based on pseudo label learning",
Image and Vision Computing 161, 2025), on the two-stream layout of the AGW baseline (Ye et al., TPAMI 2021)
and the part branch of Hc-Tri (Liu et al., TMM 2020) / PCB (Sun et al., ECCV 2018).

Visible and infrared images go through their own stem (conv1, bn1, relu, maxpool) and layer1, then together
through the shared layer2-4 (last stride 1). The final map is cut into num_parts horizontal stripes; each is
GeM-pooled (p=3; Radenovic et al., TPAMI 2018) and mapped by its own 1x1 conv + BN + ReLU to a part feature
g_p, which its own linear layer classifies. The global feature f is the concatenation of the part features.
"""
import copy
import os
from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from utils import UserError, first_line, load_state_strict

VISIBLE, INFRARED = 0, 1  # index of each modality's stem, and the modality labels of the losses
ARCHS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}  # channels of layer4's output


class ModelOutput(NamedTuple):
    feat: torch.Tensor         # (B, num_parts * part_dim) concatenated part features (L2-normalised in eval)
    part_feats: torch.Tensor   # (B, num_parts, part_dim), non-negative (after ReLU)
    part_logits: torch.Tensor  # (B, num_parts, num_classes)


def load_resnet(arch, pretrained):
    """A torchvision ResNet: ImageNet weights ('imagenet'), random init ('none'), or a state dict file.

    A file must hold the state dict of a torchvision ResNet of the same arch, as written by
    torch.save(resnet.state_dict(), path); its fc.* keys are optional and ignored (the classifier is
    replaced), so a backbone saved without its ImageNet head, or with a head of another size, loads too.
    To continue a run of this repo use --resume, not --pretrained.
    """
    if arch not in ARCHS:
        raise UserError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    builder = getattr(torchvision.models, arch)
    if pretrained == "imagenet":
        weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
        try:
            return builder(weights=weights)
        except Exception as err:  # URLError, HTTPError, OSError, a bad hash: no internet or a broken cache
            raise UserError(f"cannot load the ImageNet weights of {arch} ({first_line(err)[:200]}); use --pretrained none "
                            f"or --pretrained PATH to a local {arch} state dict") from None
    net = builder(weights=None)
    if pretrained == "none":
        return net
    if not os.path.isfile(pretrained):
        raise UserError(f"--pretrained {pretrained}: no such file (use imagenet, none or a path)")
    try:
        state = torch.load(pretrained, map_location="cpu", weights_only=True)
        state = {key: value for key, value in state.items() if not key.startswith("fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [key for key in missing if not key.startswith("fc.")]
        if missing or unexpected:
            raise KeyError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    except Exception as err:  # unpickling errors, a non-dict, mis-shaped tensors, wrong keys
        raise UserError(f"--pretrained {pretrained} is not a torchvision {arch} state dict "
                        f"({first_line(err)[:200]})") from None
    return net


def set_last_stride(layer4, stride):
    """Set the stride of layer4 (its first block's strided conv and its downsample) in place.

    torchvision's Bottleneck (resnet50) strides its 3x3 conv2, BasicBlock (resnet18/34) its conv1. Stride 1
    keeps an 18x9 final map at 288x144 input (PCB); the weights are unchanged, only the sampling.
    """
    block = layer4[0]
    strided_conv = block.conv2 if hasattr(block, "conv3") else block.conv1
    strided_conv.stride = (stride, stride)
    if block.downsample is not None:
        block.downsample[0].stride = (stride, stride)


def gem_stripes(x, num_parts, p=3.0, eps=1e-6):
    """GeM pooling over num_parts horizontal stripes: (B, C, H, W) -> (B, C, num_parts).

    Adaptive pooling puts stripe i over rows floor(i*H/n) .. ceil((i+1)*H/n), so H need not divide by
    num_parts and may even be smaller (small test images: stripes then share rows). When it divides (18 rows
    at 288x144) the stripes are the usual equal cuts. Computed in float32: x^3 overflows float16.
    """
    pooled = F.adaptive_avg_pool2d(x.float().clamp(min=eps).pow(p), (num_parts, 1))  # (B, C, num_parts, 1)
    return pooled.pow(1.0 / p).squeeze(3)  # (B, C, num_parts)


class embed_net(nn.Module):
    """Two-stream ResNet with the part branch.

    Args:
        num_classes: identities of the training set (C).
        arch: resnet18 | resnet34 | resnet50.
        pretrained: 'imagenet' (torchvision weights API; needs the internet or torch's cache), 'none' (random
            init) or a path to a torchvision ResNet state dict (see load_resnet).
        num_parts: horizontal stripes (P). part_dim: size of each part feature (D).
        last_stride: stride of layer4 (1 as in PCB/AGW; 2 is torchvision's).
    """

    def __init__(self, num_classes, arch="resnet50", pretrained="imagenet", num_parts=6, part_dim=256, last_stride=1):
        super().__init__()
        resnet = load_resnet(arch, pretrained)
        set_last_stride(resnet.layer4, last_stride)
        stem = nn.Sequential(OrderedDict(conv1=resnet.conv1, bn1=resnet.bn1, relu=resnet.relu,
                                         maxpool=resnet.maxpool, layer1=resnet.layer1))
        # one stem + layer1 per modality, indexed by VISIBLE / INFRARED; both start from the same weights
        self.modal_stems = nn.ModuleList([stem, copy.deepcopy(stem)])
        self.shared = nn.Sequential(OrderedDict(layer2=resnet.layer2, layer3=resnet.layer3, layer4=resnet.layer4))
        self.num_parts, self.part_dim, self.num_classes = num_parts, part_dim, num_classes
        in_dim = ARCHS[arch]

        # The num_parts 1x1 convs and classifiers are stored stacked and applied with one einsum each. This is
        # the same maths as num_parts separate Conv2d(in_dim, part_dim, 1) + BatchNorm + ReLU + Linear layers:
        # BN normalises each channel on its own, so one BN over num_parts * part_dim channels is per-part BN.
        # The convs have no bias: the BN right after it subtracts the batch mean, which cancels any bias.
        self.part_conv_weight = nn.Parameter(torch.empty(num_parts, part_dim, in_dim))  # (P, D, in_dim)
        self.part_bn = nn.BatchNorm1d(num_parts * part_dim)  # weight 1, bias 0, as the field's BatchNorm2d
        self.classifier_weight = nn.Parameter(torch.empty(num_parts, num_classes, part_dim))  # (P, C, D)
        self.classifier_bias = nn.Parameter(torch.zeros(num_parts, num_classes))  # (P, C)
        for weight in self.part_conv_weight:  # Kaiming normal, fan_in, as the field's weights_init_kaiming
            nn.init.kaiming_normal_(weight, a=0, mode="fan_in", nonlinearity="relu")
        nn.init.normal_(self.classifier_weight, mean=0.0, std=0.001)

    def backbone_parameters(self):
        """The ResNet's parameters (both stems, layer2-4): the optimiser's backbone lr group."""
        return list(self.modal_stems.parameters()) + list(self.shared.parameters())

    def head_parameters(self):
        """The new layers (part convs, their BN, the classifiers): the optimiser's head lr group."""
        return [self.part_conv_weight, *self.part_bn.parameters(), self.classifier_weight, self.classifier_bias]

    def forward(self, x_rgb=None, x_ir=None, return_parts=False):
        """x_rgb, x_ir: (B_rgb, 3, H, W), (B_ir, 3, H, W) or None. Output rows are [rgb rows; ir rows] (B in all).

        Training mode: ModelOutput(feat, part_feats, part_logits), shapes as in ModelOutput.
        Eval mode: the L2-normalised feat (B, P*D), the test feature; with return_parts=True a ModelOutput
        whose feat is normalised, for pseudo-labelling, which needs the part features and logits too.
        """
        maps = [self.modal_stems[modal](x) for modal, x in ((VISIBLE, x_rgb), (INFRARED, x_ir)) if x is not None]
        if not maps:
            raise ValueError("forward needs x_rgb or x_ir")
        # one pass through the shared layers: their BN statistics are over both modalities, as in AGW
        x = self.shared(torch.cat(maps))  # (B, in_dim, h, w)
        stripes = gem_stripes(x, self.num_parts).to(x.dtype)  # (B, in_dim, P)
        part = torch.einsum("bcp,pdc->bpd", stripes, self.part_conv_weight.to(x.dtype))  # (B, P, D)
        part = self.part_bn(part.flatten(1)).unflatten(1, (self.num_parts, self.part_dim))  # (B, P, D)
        part_feats = F.relu(part)  # (B, P, D)
        part_logits = torch.einsum("bpd,pkd->bpk", part_feats, self.classifier_weight.to(part_feats.dtype))
        part_logits = part_logits + self.classifier_bias.to(part_logits.dtype)  # (B, P, C)
        feat = part_feats.flatten(1)  # (B, P*D)
        if self.training:
            return ModelOutput(feat, part_feats, part_logits)
        feat = F.normalize(feat.float(), dim=1)
        return ModelOutput(feat, part_feats, part_logits) if return_parts else feat


def embed_net_from_checkpoint(state, path):
    """embed_net rebuilt from a checkpoint's args and weights; the class count is read off the classifier."""
    run, weights = state["args"], state["model"]
    missing = [key for key in ("arch", "num_parts", "part_dim") if key not in run]
    if missing or "classifier_weight" not in weights:
        raise UserError(f"checkpoint {path} does not describe an embed_net (missing {missing or 'classifier_weight'})")
    model = embed_net(int(weights["classifier_weight"].shape[1]), arch=run["arch"], pretrained="none",
                      num_parts=run["num_parts"], part_dim=run["part_dim"])
    load_state_strict(model, weights, "model", path)
    return model
