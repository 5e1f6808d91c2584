"""model.py and loss.py: shapes, the two streams, initialisation, and each loss against hand computations."""
import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from loss import dynamic_center_ce, euclidean_dist, hetero_center_triplet, weighted_jaccard_dist
from model import embed_net
from utils import UserError


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return embed_net(class_num=7, arch="resnet18", pretrained="none")


@pytest.mark.parametrize("size", [(64, 32), (32, 16), (16, 16)])  # 16x16: a final map shorter than 6 rows
def test_train_outputs_have_the_documented_shapes(net, size):
    net.train()
    x = torch.randn(3, 3, *size)
    out = net(x_rgb=x, x_ir=x[:2])
    assert out.feat.shape == (5, 6 * 256) and out.part_feats.shape == (5, 6, 256)
    assert out.part_logits.shape == (5, 6, 7)
    assert (out.part_feats >= 0).all()
    assert torch.equal(out.feat, out.part_feats.flatten(1))


def test_eval_feature_is_unit_norm_and_parts_on_request(net):
    net.eval()
    x = torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        feat = net(x_ir=x)
        full = net(x_ir=x, return_parts=True)
    assert feat.shape == (4, 1536) and torch.allclose(feat.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(full.feat, feat) and full.part_logits.shape == (4, 6, 7)


def test_resnet50_at_full_size():
    model = embed_net(class_num=395, arch="resnet50", pretrained="none").eval()
    with torch.no_grad():
        out = model(x_rgb=torch.randn(1, 3, 288, 144), return_parts=True)
        final_map = model.shared(model.modal_stems[0](torch.randn(1, 3, 288, 144)))
    assert final_map.shape == (1, 2048, 18, 9)  # last stride 1
    assert out.feat.shape == (1, 1536) and out.part_logits.shape == (1, 6, 395)


def test_the_two_stems_are_separate_and_later_layers_shared(net):
    net.train()
    net.zero_grad()
    out = net(x_rgb=torch.randn(4, 3, 32, 16))
    out.part_logits.sum().backward()
    ir_grads = [p.grad for p in net.modal_stems[1].parameters()]
    assert all(g is None or g.abs().sum() == 0 for g in ir_grads)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.modal_stems[0].parameters())
    assert all(p.grad is not None for p in net.shared.parameters())
    assert net.modal_stems[0][0] is not net.modal_stems[1][0]
    assert torch.equal(net.modal_stems[0][0].weight, net.modal_stems[1][0].weight)  # same start
    ids = {id(p) for p in net.backbone_parameters()} | {id(p) for p in net.head_parameters()}
    assert ids == {id(p) for p in net.parameters()}  # the two lr groups cover everything once
    assert not {id(p) for p in net.backbone_parameters()} & {id(p) for p in net.head_parameters()}


def test_classifier_init(net):
    assert abs(net.classifier_weight.std().item() - 0.001) < 2e-4 and net.classifier_bias.abs().sum() == 0


def test_pretrained_sources(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        embed_net(5, arch="resnet18", pretrained=str(tmp_path / "missing.pth"))
    with mock.patch("torchvision.models.resnet18", side_effect=OSError("network unreachable")):
        with pytest.raises(UserError, match="--pretrained none"):
            embed_net(5, arch="resnet18", pretrained="imagenet")
    import torchvision
    path = tmp_path / "r18.pth"
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), path)
    loaded = embed_net(5, arch="resnet18", pretrained=str(path))
    assert torch.equal(loaded.modal_stems[1][0].weight, reference.conv1.weight)


# ---------------------------------------------------------------------------------------------- losses

def test_weighted_jaccard_l1_form_equals_min_max_form():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(5, 9, generator=gen), torch.rand(4, 9, generator=gen)
    direct = 1 - torch.minimum(a[:, None], b[None]).sum(2) / torch.maximum(a[:, None], b[None]).sum(2)
    assert torch.allclose(weighted_jaccard_dist(a, b), direct, atol=1e-6)
    assert torch.allclose(weighted_jaccard_dist(a[:4], b, paired=True), direct[:4].diagonal(), atol=1e-6)
    assert weighted_jaccard_dist(torch.zeros(1, 3), torch.zeros(1, 3)).item() == 0


def test_euclidean_backward_is_finite_for_identical_rows():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0]], requires_grad=True)
    euclidean_dist(x, x).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.allclose(euclidean_dist(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])), torch.tensor([[5.0]]))


def test_hetero_center_triplet_by_hand():
    # id 0: visible center (0,0), infrared center (2,0) -> d_ap = 2; id 1: visible (0,3), infrared (2,3).
    # nearest other-id center: for (0,0) it is (0,3) at 3; for (2,0): (2,3) at 3; likewise for id 1.
    # loss per center = max(0, 0.3 + 2 - 3) = 0; with margin 2: 2 + 2 - 3 = 1 for each of the 4 centers.
    feats = torch.tensor([[0.0, -1], [0, 1], [2, -1], [2, 1], [0, 2], [0, 4], [2, 2], [2, 4]])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    modals = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    assert hetero_center_triplet(feats, labels, modals, margin=0.3).item() == pytest.approx(0.0, abs=1e-5)
    assert hetero_center_triplet(feats, labels, modals, margin=2.0).item() == pytest.approx(1.0, abs=1e-5)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))  # batch order does not matter
    assert hetero_center_triplet(feats[perm], labels[perm], modals[perm], margin=2.0).item() == pytest.approx(1.0, abs=1e-5)
    # far-apart classes -> 0; overlapping classes -> positive
    far = feats + torch.tensor([[0.0, 0]] * 4 + [[0, 100]] * 4)
    assert hetero_center_triplet(far, labels, modals).item() == 0
    overlap = torch.tensor([[0.0, 0], [0, 0], [5, 0], [5, 0], [0.1, 0], [0.1, 0], [5.1, 0], [5.1, 0]])
    assert hetero_center_triplet(overlap, labels, modals).item() > 0


def test_dynamic_center_ce_by_hand_and_gradients():
    centers = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feats = torch.tensor([[2.0, 0.0], [3.0, 0.0], [0.0, 1.0]], requires_grad=True)
    # nearest centers (Jaccard): 0, 0, 1 -> counts 2, 2, 1
    # z = <f, c> / n: [1, 0], [1.5, 0], [0, 1]
    z = torch.tensor([[1.0, 0.0], [1.5, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    ce = F.cross_entropy(z, y)
    # log softmax of a one-hot over 2 classes: [1 - log(e + 1), -log(e + 1)]
    log_onehot = torch.tensor([[1 - math.log(math.e + 1), -math.log(math.e + 1)]])
    log_onehot = torch.stack([log_onehot[0], log_onehot[0], log_onehot[0].flip(0)])
    rce = -(z.softmax(1) * log_onehot).sum(1).mean()
    centers_param = centers.clone().requires_grad_(True)
    loss = dynamic_center_ce(feats, centers_param, ce_weight=0.1)
    assert loss.item() == pytest.approx((0.1 * ce + rce).item(), abs=1e-6)
    loss.backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert centers_param.grad is None
