"""Two-stream ResNet with a PCB part branch: the feature mapping and identity alignment modules of CPL.

Visible and infrared images go through their own stem (conv1, bn1, relu, maxpool) and layer1, then through
shared layer2-4 (last stride 1). The final map is cut into num_parts horizontal stripes; each is GeM-pooled
and mapped by its own 1x1 conv + BN + ReLU to a part feature g_p, classified by its own linear layer. The
global feature is the concatenation of the part features.
"""
import copy
import os
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from utils import UserError

VISIBLE, INFRARED = 0, 1
ARCHS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}  # channels of layer4's output


class ModelOutput(NamedTuple):
    feat: torch.Tensor         # (B, num_parts * part_dim) concatenated part features (L2-normalised in eval)
    part_feats: torch.Tensor   # (B, num_parts, part_dim), non-negative
    part_logits: torch.Tensor  # (B, num_parts, class_num)


def load_resnet(arch, pretrained):
    """A torchvision ResNet with ImageNet weights ('imagenet'), random init ('none') or a state dict file."""
    if arch not in ARCHS:
        raise UserError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    builder = getattr(torchvision.models, arch)
    if pretrained == "imagenet":
        weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
        try:
            return builder(weights=weights)
        except Exception as err:  # URLError, HTTPError, RuntimeError from the hub: no internet or no cache
            raise UserError(f"cannot fetch the ImageNet weights of {arch} ({type(err).__name__}); use "
                            f"--pretrained none or --pretrained PATH to a local state dict") from None
    net = builder(weights=None)
    if pretrained == "none":
        return net
    if not os.path.isfile(pretrained):
        raise UserError(f"--pretrained {pretrained}: no such file (use imagenet, none or a path)")
    try:
        state = torch.load(pretrained, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as err:
        raise UserError(f"--pretrained {pretrained} is not a {arch} state dict ({str(err).splitlines()[0][:200]})") from None
    return net


def gem_stripes(x, num_parts, p=3.0, eps=1e-6):
    """GeM pooling over num_parts horizontal stripes: (B, C, H, W) -> (B, C, num_parts).

    Adaptive pooling places the stripe borders at floor/ceil(i * H / num_parts), so H need not divide by
    num_parts and may even be smaller (small test images): stripes then overlap.
    """
    pooled = F.adaptive_avg_pool2d(x.float().clamp(min=eps).pow(p), (num_parts, 1))  # (B, C, parts, 1)
    return pooled.pow(1.0 / p).squeeze(3)


class embed_net(nn.Module):
    """Args:
        class_num: identities of the training set.
        arch: resnet18 | resnet34 | resnet50.
        pretrained: imagenet | none | path to a torchvision ResNet state dict.
        num_parts: horizontal stripes; part_dim: size of each part feature; last_stride: stride of layer4.
    """

    def __init__(self, class_num, arch="resnet50", pretrained="imagenet", num_parts=6, part_dim=256, last_stride=1):
        super().__init__()
        resnet = load_resnet(arch, pretrained)
        if last_stride == 1:  # keep an 18x9 final map at 288x144 (PCB); works for Bottleneck and BasicBlock
            block = resnet.layer4[0]
            (block.conv2 if hasattr(block, "conv3") else block.conv1).stride = (1, 1)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
        stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1)
        # one stem + layer1 per modality, both starting from the same weights
        self.modal_stems = nn.ModuleList([stem, copy.deepcopy(stem)])
        self.shared = nn.Sequential(resnet.layer2, resnet.layer3, resnet.layer4)
        self.num_parts, self.part_dim, self.class_num = num_parts, part_dim, class_num
        in_dim = ARCHS[arch]
        # The num_parts 1x1 convs and classifiers are stored stacked and applied with one einsum: the same
        # maths as separate per-part layers (and BN over num_parts*part_dim channels is per-part BN).
        self.part_conv_weight = nn.Parameter(torch.empty(num_parts, part_dim, in_dim))
        self.part_bn = nn.BatchNorm1d(num_parts * part_dim)
        self.classifier_weight = nn.Parameter(torch.empty(num_parts, class_num, part_dim))
        self.classifier_bias = nn.Parameter(torch.zeros(num_parts, class_num))
        for weight in self.part_conv_weight:  # Kaiming init of each 1x1 conv, fan_out as torchvision's convs
            nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.classifier_weight, std=0.001)

    def backbone_parameters(self):
        return list(self.modal_stems.parameters()) + list(self.shared.parameters())

    def head_parameters(self):
        return [self.part_conv_weight, *self.part_bn.parameters(), self.classifier_weight, self.classifier_bias]

    def forward(self, x_rgb=None, x_ir=None, return_parts=False):
        """x_rgb, x_ir: (B, 3, H, W) or None. Output rows are [rgb rows; ir rows].

        Training mode: ModelOutput(feat, part_feats, part_logits). Eval mode: the L2-normalised feat (B, D);
        with return_parts=True, ModelOutput with the normalised feat (pseudo-labelling needs parts and logits).
        """
        maps = [self.modal_stems[modal](x) for modal, x in ((VISIBLE, x_rgb), (INFRARED, x_ir)) if x is not None]
        if not maps:
            raise ValueError("forward needs x_rgb or x_ir")
        x = self.shared(torch.cat(maps))  # (B, C, h, w); BN statistics over both modalities, as AGW
        stripes = gem_stripes(x, self.num_parts).to(x.dtype)  # (B, C, parts)
        part = torch.einsum("bcp,pdc->bpd", stripes, self.part_conv_weight.to(x.dtype))  # (B, parts, part_dim)
        part = self.part_bn(part.flatten(1)).view_as(part)
        part_feats = F.relu(part)  # (B, parts, part_dim)
        part_logits = torch.einsum("bpd,pkd->bpk", part_feats, self.classifier_weight.to(part_feats.dtype))
        part_logits = part_logits + self.classifier_bias.to(part_logits.dtype)  # (B, parts, class_num)
        feat = part_feats.flatten(1)  # (B, parts * part_dim)
        if self.training:
            return ModelOutput(feat, part_feats, part_logits)
        feat = F.normalize(feat.float(), dim=1)
        return ModelOutput(feat, part_feats, part_logits) if return_parts else feat
