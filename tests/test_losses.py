"""CAL's losses against direct transcriptions of their formulas (SPEC "train: CAL with generated data")."""

from __future__ import annotations

import math

import pytest
import torch

from dlcr_cli.reid.losses import (
    ClothesClassifier,
    IdentityClassifier,
    cal_loss,
    clothes_loss,
    identity_loss,
    positive_mask,
    triplet_loss,
)


def _case(batch: int, classes: int, seed: int, dtype=torch.float64):
    """Cosines in [-1, 1], clothes labels, and positive masks that contain each sample's own class."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.rand(batch, classes, generator=gen, dtype=dtype) * 2 - 1
    clothes = torch.randint(0, classes, (batch,), generator=gen)
    pos = torch.rand(batch, classes, generator=gen) < 0.3
    pos[torch.arange(batch), clothes] = True
    return z, clothes, pos


def _cal_by_loops(z, clothes, pos, s: float, eps: float) -> float:
    """The SPEC's formula, one term at a time."""
    batch, classes = len(z), len(z[0])
    total = 0.0
    for i in range(batch):
        positives = [j for j in range(classes) if pos[i][j]]
        negatives = [k for k in range(classes) if not pos[i][k]]
        for j in range(classes):
            q = (1 - eps) * (j == clothes[i]) + (eps / len(positives) if j in positives else 0.0)
            if q == 0:
                continue
            denominator = math.exp(s * z[i][j]) + sum(math.exp(s * z[i][k]) for k in negatives)
            total += q * (s * z[i][j] - math.log(denominator))
    return -total / batch


@pytest.mark.parametrize("batch,classes,eps,seed", [
    (1, 1, 0.1, 0), (4, 3, 0.1, 1), (8, 10, 0.1, 2), (16, 7, 0.0, 3), (6, 12, 0.5, 4), (5, 20, 1.0, 5),
])
def test_cal_loss_matches_the_formula(batch, classes, eps, seed):
    z, clothes, pos = _case(batch, classes, seed)
    expected = _cal_by_loops(z.tolist(), clothes.tolist(), pos.tolist(), 16.0, eps)
    assert cal_loss(z, clothes, pos, s=16.0, eps=eps).item() == pytest.approx(expected, abs=1e-6)
    assert cal_loss(z, clothes, pos.float(), s=16.0, eps=eps).item() == pytest.approx(expected, abs=1e-6)


def test_cal_loss_matches_the_reference_code():
    """CAL's ClothesBasedAdversarialLoss, transcribed (plain exp/log, fine at these sizes)."""
    z, clothes, pos = _case(12, 9, 7)
    inputs, positive = 16 * z, pos.double()
    identity = torch.zeros_like(inputs).scatter_(1, clothes.unsqueeze(1), 1)
    exp = torch.exp(inputs)
    log_prob = inputs - torch.log((exp * (1 - positive)).sum(1, keepdim=True) + exp)
    mask = 0.9 * identity + 0.1 / positive.sum(1, keepdim=True) * positive
    reference = (-mask * log_prob).sum(1).mean()
    assert cal_loss(z, clothes, pos).item() == pytest.approx(reference.item(), abs=1e-9)


def test_cal_loss_is_stable_and_differentiable():
    z, clothes, pos = _case(6, 5, 8)
    pos[0] = True  # an identity that wears every class: no negatives
    big = cal_loss(z * 100, clothes, pos, s=16.0)  # s z up to 1600: exp would overflow
    assert torch.isfinite(big)
    z.requires_grad_(True)
    cal_loss(z, clothes, pos).backward()
    assert torch.isfinite(z.grad).all()
    torch.autograd.gradcheck(lambda x: cal_loss(x, clothes, pos), (z.detach().clone().requires_grad_(True),))


def test_cal_loss_in_half_precision_is_computed_in_float32():
    z, clothes, pos = _case(8, 6, 9, dtype=torch.float32)
    full = cal_loss(z, clothes, pos)
    half = cal_loss(z.bfloat16(), clothes, pos)
    assert half.dtype == torch.float32 and half.item() == pytest.approx(full.item(), abs=0.1)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_identity_loss_is_label_smoothed_cross_entropy(eps):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    pids = torch.randint(0, 5, (7,), generator=gen)
    # CAL's CrossEntropyWithLabelSmooth: targets (1 - eps) onehot + eps / K, mean over the batch.
    targets = (1 - eps) * torch.nn.functional.one_hot(pids, 5).double() + eps / 5
    expected = (-targets * torch.log_softmax(logits, dim=1)).mean(0).sum()
    assert identity_loss(logits, pids, eps=eps).item() == pytest.approx(expected.item(), abs=1e-12)


def test_identity_classifier_init():
    torch.manual_seed(0)
    classifier = IdentityClassifier(4096, 150)
    assert classifier(torch.randn(2, 4096)).shape == (2, 150)
    assert classifier.fc.weight.std().item() == pytest.approx(0.001, rel=0.02)
    assert torch.equal(classifier.fc.bias, torch.zeros(150))


def test_clothes_classifier_is_cosine_and_its_loss_cosface_scale_16():
    torch.manual_seed(0)
    classifier = ClothesClassifier(16, 6)
    assert torch.allclose(classifier.weight.norm(dim=1), torch.ones(6), atol=1e-4)  # unit rows at init
    features = torch.randn(4, 16) * 5
    cos = classifier(features)
    normalize = torch.nn.functional.normalize
    expected = normalize(features, dim=1) @ normalize(classifier.weight, dim=1).T
    assert torch.allclose(cos, expected, atol=1e-6) and cos.abs().max() <= 1 + 1e-6
    clothes = torch.tensor([0, 3, 5, 1])
    assert torch.allclose(clothes_loss(cos, clothes), torch.nn.functional.cross_entropy(16 * cos, clothes))


def test_clothes_loss_on_detached_features_leaves_the_backbone_alone():
    """The wiring of the reference: its own loss on detached features, CAL through the classifier."""
    torch.manual_seed(0)
    backbone = torch.nn.Linear(8, 16)
    classifier = ClothesClassifier(16, 4)
    features = backbone(torch.randn(6, 8))
    clothes = torch.tensor([0, 1, 2, 3, 0, 1])
    clothes_loss(classifier(features.detach()), clothes).backward()
    assert backbone.weight.grad is None and classifier.weight.grad is not None
    pos = positive_mask(torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]]), torch.tensor([0, 0, 1, 1, 0, 0]))
    cal_loss(classifier(features), clothes, pos).backward()
    assert backbone.weight.grad is not None


def test_positive_mask_picks_each_identitys_row():
    pid2clothes = torch.tensor([[True, False, True], [False, True, False]])
    mask = positive_mask(pid2clothes, torch.tensor([1, 0, 1]))
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[False, True, False], [True, False, True], [False, True, False]]


def test_triplet_loss_hard_mining_on_a_hand_made_case():
    # Unit vectors at angles (degrees): id 0 at 0 and 60, id 1 at 90 and 180.
    angles = torch.tensor([0.0, 60.0, 90.0, 180.0]) * math.pi / 180
    features = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1) * torch.tensor([[1.0], [2.0], [3.0], [0.5]])
    pids = torch.tensor([0, 0, 1, 1])

    def d(a, b):  # cosine distance between the angles
        return 1 - math.cos(math.radians(a - b))

    # anchor: (hardest positive, hardest negative)
    pairs = [(d(0, 60), d(0, 90)), (d(60, 0), d(60, 90)), (d(90, 180), d(90, 60)), (d(180, 90), d(180, 60))]
    expected = sum(max(0.0, ap - an + 0.3) for ap, an in pairs) / 4
    assert triplet_loss(features, pids).item() == pytest.approx(expected, abs=1e-6)
    assert triplet_loss(features, pids, margin=0.0).item() == pytest.approx(
        sum(max(0.0, ap - an) for ap, an in pairs) / 4, abs=1e-6)


def test_triplet_loss_edge_cases():
    one_id = torch.randn(4, 8)
    assert triplet_loss(one_id, torch.zeros(4, dtype=torch.long)).item() == 0.0  # no negatives
    singles = torch.randn(3, 8, requires_grad=True)
    loss = triplet_loss(singles, torch.tensor([0, 1, 2]))  # hardest positive is the anchor itself
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(singles.grad).all()
