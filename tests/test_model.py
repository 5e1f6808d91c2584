"""model.py: output shapes and row order, the two streams, the part branch, initialisation, weight sources."""
import urllib.error
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
import torchvision

from model import INFRARED, VISIBLE, ModelOutput, embed_net, gem_stripes
from utils import UserError

NUM_CLASSES = 7


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return embed_net(num_classes=NUM_CLASSES, arch="resnet18", pretrained="none")


def final_map(model, x, modal=VISIBLE):
    return model.shared(model.modal_stems[modal](x))


# (64, 32): final map 4 rows, fewer than the 6 parts; (112, 48): 7 rows, not divisible by 6; (16, 16): 1 row
@pytest.mark.parametrize("size, map_hw", [((64, 32), (4, 2)), ((32, 16), (2, 1)), ((112, 48), (7, 3)),
                                          ((16, 16), (1, 1))])
def test_train_outputs_have_the_documented_shapes(net, size, map_hw):
    net.train()
    x = torch.randn(3, 3, *size)
    with torch.no_grad():
        assert final_map(net, x).shape == (3, 512, *map_hw)  # total stride 16: last stride 1
    out = net(x_rgb=x, x_ir=x[:2])
    assert isinstance(out, ModelOutput)
    assert out.feat.shape == (5, 6 * 256) and out.part_feats.shape == (5, 6, 256)
    assert out.part_logits.shape == (5, 6, NUM_CLASSES)
    assert (out.part_feats >= 0).all()
    assert torch.equal(out.feat, out.part_feats.flatten(1))
    assert torch.isfinite(out.part_logits).all()


def test_rows_are_rgb_then_ir_through_their_own_stems(net):
    net.eval()  # BN on running statistics: each row depends on itself only
    x_rgb, x_ir = torch.randn(3, 3, 32, 16), torch.randn(2, 3, 32, 16)
    with torch.no_grad():
        both = net(x_rgb=x_rgb, x_ir=x_ir, return_parts=True)
        rgb_only = net(x_rgb=x_rgb, return_parts=True)
        ir_only = net(x_ir=x_ir, return_parts=True)
        ir_conv1 = net.modal_stems[INFRARED].conv1.weight
        saved = ir_conv1.clone()
        ir_conv1.mul_(2)  # change the infrared stem only: infrared rows change, visible rows do not
        try:
            ir_changed, rgb_unchanged = net(x_ir=x_ir), net(x_rgb=x_rgb)
        finally:
            ir_conv1.copy_(saved)
    for joint, alone in zip(both, rgb_only):
        assert torch.allclose(joint[:3], alone, atol=1e-5)
    for joint, alone in zip(both, ir_only):
        assert torch.allclose(joint[3:], alone, atol=1e-5)
    assert not torch.allclose(ir_changed, ir_only.feat, atol=1e-3)
    assert torch.allclose(rgb_unchanged, rgb_only.feat, atol=1e-6)
    with pytest.raises(ValueError):
        net()


def test_eval_feature_is_unit_norm_and_parts_on_request():
    torch.manual_seed(1)
    model = embed_net(num_classes=5, arch="resnet18", pretrained="none", num_parts=4, part_dim=32).eval()
    x = torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        feat = model(x_ir=x)
        full = model(x_ir=x, return_parts=True)
    assert feat.shape == (4, 4 * 32) and feat.dtype == torch.float32
    assert torch.allclose(feat.norm(dim=1), torch.ones(4), atol=1e-5)
    assert isinstance(full, ModelOutput) and torch.allclose(full.feat, feat)
    assert full.part_feats.shape == (4, 4, 32) and full.part_logits.shape == (4, 4, 5)
    assert (full.part_feats >= 0).all()
    assert torch.allclose(F.normalize(full.part_feats.flatten(1), dim=1), feat, atol=1e-6)


def test_resnet50_at_full_size():
    torch.manual_seed(0)
    model = embed_net(num_classes=395, arch="resnet50", pretrained="none").eval()
    assert model.part_conv_weight.shape == (6, 256, 2048)
    block = model.shared.layer4[0]  # Bottleneck: the stride sits on conv2 and the downsample
    assert block.conv2.stride == (1, 1) and block.downsample[0].stride == (1, 1)
    x = torch.randn(2, 3, 288, 144)
    with torch.no_grad():
        out = model(x_rgb=x[:1], x_ir=x[1:], return_parts=True)
        assert final_map(model, x[:1]).shape == (1, 2048, 18, 9)  # PCB's 18x9 map: 6 stripes of 3 rows
    assert out.feat.shape == (2, 1536) and out.part_feats.shape == (2, 6, 256)
    assert out.part_logits.shape == (2, 6, 395)


def test_last_stride_of_basic_blocks():
    block = embed_net(3, arch="resnet18", pretrained="none").shared.layer4[0]  # BasicBlock: conv1 is strided
    assert block.conv1.stride == (1, 1) and block.downsample[0].stride == (1, 1)
    model = embed_net(3, arch="resnet18", pretrained="none", last_stride=2).eval()
    with torch.no_grad():
        assert final_map(model, torch.randn(1, 3, 64, 32)).shape == (1, 512, 2, 1)  # torchvision's stride


def test_the_two_stems_are_separate_and_later_layers_shared(net):
    net.train()
    assert net.modal_stems[VISIBLE].conv1 is not net.modal_stems[INFRARED].conv1
    assert net.modal_stems[VISIBLE].layer1 is not net.modal_stems[INFRARED].layer1
    stem_ptrs = [{p.data_ptr() for p in net.modal_stems[m].parameters()} for m in (VISIBLE, INFRARED)]
    assert not stem_ptrs[0] & stem_ptrs[1]  # separate storage, not tied weights
    for p_rgb, p_ir in zip(net.modal_stems[VISIBLE].parameters(), net.modal_stems[INFRARED].parameters()):
        assert torch.equal(p_rgb, p_ir)  # ... starting from the same weights
    for modal, key in ((VISIBLE, "x_rgb"), (INFRARED, "x_ir")):
        net.zero_grad(set_to_none=True)
        net(**{key: torch.randn(4, 3, 32, 16)}).part_logits.sum().backward()
        other = net.modal_stems[1 - modal]
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in other.parameters())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.modal_stems[modal].parameters()
                   if p.dim() > 1)  # every conv of its own stem learns
        # layer2-4 exist once and learn from either modality
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.shared.parameters() if p.dim() > 1)
    net.zero_grad(set_to_none=True)


def test_parameter_groups_cover_the_model_once(net):
    backbone = [id(p) for p in net.backbone_parameters()]
    head = [id(p) for p in net.head_parameters()]
    assert len(set(backbone)) == len(backbone) and len(set(head)) == len(head)
    assert not set(backbone) & set(head)
    assert set(backbone) | set(head) == {id(p) for p in net.parameters()}
    assert {id(p) for p in net.shared.parameters()} <= set(backbone)
    assert {id(net.part_conv_weight), id(net.classifier_weight), id(net.classifier_bias)} <= set(head)


def test_initialisation(net):
    # classifier N(0, 0.001), bias 0: 6 * 7 * 256 = 10752 draws, so the std is within a few percent
    assert abs(net.classifier_weight.std().item() - 0.001) < 1e-4
    assert abs(net.classifier_weight.mean().item()) < 1e-4
    assert net.classifier_bias.abs().sum() == 0
    # 1x1 convs Kaiming normal, fan_in 512: std sqrt(2 / 512) = 0.0625
    assert net.part_conv_weight.std().item() == pytest.approx(0.0625, rel=0.03)
    assert torch.equal(net.part_bn.weight, torch.ones(6 * 256)) and net.part_bn.bias.abs().sum() == 0


def test_vectorised_part_branch_equals_separate_per_part_layers(net):
    """The stacked einsum + one BN must be the maths of P separate conv + BN + ReLU + linear layers."""
    net.train()
    torch.manual_seed(2)
    with torch.no_grad():
        net.part_bn.weight.uniform_(0.5, 1.5)  # make the per-part BN affine non-trivial for this check
        net.part_bn.bias.uniform_(-0.2, 0.2)
        net.classifier_bias.uniform_(-0.1, 0.1)
        x = torch.randn(5, 3, 96, 32)  # final map 6 rows: stripe p is row p
        fmap = final_map(net, x)
        out = net(x_rgb=x)
        dim = net.part_dim
        for p in range(6):
            stripe = fmap[:, :, p:p + 1, :]  # (B, C, 1, w)
            pooled = stripe.clamp(min=1e-6).pow(3).mean(dim=(2, 3), keepdim=True).pow(1 / 3)  # GeM, p = 3
            conv = F.conv2d(pooled, net.part_conv_weight[p].unsqueeze(-1).unsqueeze(-1)).flatten(1)  # (B, D)
            bn = F.batch_norm(conv, None, None, net.part_bn.weight[p * dim:(p + 1) * dim],
                              net.part_bn.bias[p * dim:(p + 1) * dim], training=True, eps=net.part_bn.eps)
            g_p = F.relu(bn)
            logits = F.linear(g_p, net.classifier_weight[p], net.classifier_bias[p])
            assert torch.allclose(out.part_feats[:, p], g_p, atol=1e-4)
            assert torch.allclose(out.part_logits[:, p], logits, atol=1e-5)
        net.part_bn.weight.fill_(1.0)
        net.part_bn.bias.zero_()
        net.classifier_bias.zero_()
        net.part_bn.reset_running_stats()


def test_gem_stripes_for_heights_below_and_not_divisible_by_the_parts():
    x = torch.rand(2, 3, 4, 2)  # 4 rows, 6 stripes: each stripe still covers at least one row
    pooled = gem_stripes(x, 6)
    assert pooled.shape == (2, 3, 6)
    # adaptive pooling: stripe i covers rows floor(4i/6) .. ceil(4(i+1)/6) - 1
    rows = [(0, 1), (0, 2), (1, 2), (2, 3), (2, 4), (3, 4)]
    for i, (start, end) in enumerate(rows):
        expected = x[:, :, start:end].pow(3).mean(dim=(2, 3)).pow(1 / 3)
        assert torch.allclose(pooled[:, :, i], expected, atol=1e-6)
    constant = torch.full((1, 2, 7, 3), 0.5)  # 7 rows: GeM of a constant is that constant in every stripe
    assert torch.allclose(gem_stripes(constant, 6), torch.full((1, 2, 6), 0.5))


def test_channels_last_gives_the_same_output(net):
    net.eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        reference = net(x_rgb=x, x_ir=x, return_parts=True)
        net.to(memory_format=torch.channels_last)
        try:
            fast = net(x_rgb=x.to(memory_format=torch.channels_last), x_ir=x, return_parts=True)
        finally:
            net.to(memory_format=torch.contiguous_format)
    for a, b in zip(reference, fast):
        assert torch.allclose(a, b, atol=1e-4)


# ---------------------------------------------------------------------------------------------- weights

def test_missing_path_and_unknown_arch_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        embed_net(5, arch="resnet18", pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match="resnet18, resnet34, resnet50"):
        embed_net(5, arch="resnet101", pretrained="none")


def test_imagenet_download_failure_is_a_user_error():
    # torchvision's weights API fetches through load_state_dict_from_url: make it fail as offline, no network
    offline = urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    with mock.patch("torchvision.models._api.load_state_dict_from_url", side_effect=offline) as fetch:
        with pytest.raises(UserError, match="--pretrained none") as err:
            embed_net(5, arch="resnet18", pretrained="imagenet")
    assert "\n" not in str(err.value)
    assert fetch.call_args.args[0] == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url


def test_imagenet_weights_go_to_both_stems_and_the_shared_layers():
    reference = torchvision.models.resnet18(weights=None)  # stands in for the ImageNet state dict
    with mock.patch("torchvision.models._api.load_state_dict_from_url", return_value=reference.state_dict()):
        model = embed_net(5, arch="resnet18", pretrained="imagenet")
    for modal in (VISIBLE, INFRARED):
        assert torch.equal(model.modal_stems[modal].conv1.weight, reference.conv1.weight)
        assert torch.equal(model.modal_stems[modal].layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert torch.equal(model.shared.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_state_dict_file_with_or_without_fc(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    full, headless, other = tmp_path / "r18.pth", tmp_path / "r18_nofc.pth", tmp_path / "r34.pth"
    other_head = tmp_path / "r18_fc10.pth"  # a backbone trained with another classifier size
    torch.save(reference.state_dict(), full)
    torch.save({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}, headless)
    torch.save(dict(reference.state_dict(), **{"fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}),
               other_head)
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), other)
    for path in (full, headless, other_head):
        model = embed_net(5, arch="resnet18", pretrained=str(path))
        assert torch.equal(model.modal_stems[INFRARED].conv1.weight, reference.conv1.weight)
        assert torch.equal(model.shared.layer3[0].bn1.running_var, reference.layer3[0].bn1.running_var)
    with pytest.raises(UserError, match="not a torchvision resnet18 state dict"):
        embed_net(5, arch="resnet18", pretrained=str(other))  # resnet34 has more blocks
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a torchvision resnet18 state dict"):
        embed_net(5, arch="resnet18", pretrained=str(tmp_path / "junk.pth"))
