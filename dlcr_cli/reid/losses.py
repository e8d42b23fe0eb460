"""CAL's classifiers and losses (docs/method.md, "the image recipe"; Simple-CCReID `losses/`).

How a training step wires them (the reference's `train_cal`), with `features = model(images)`:

    pos_mask = positive_mask(pid2clothes, pids)                  # B x num_clothes, S+(i)
    id_logits = identity_classifier(features)

    # 1. the clothes classifier learns on DETACHED features, with its own optimizer (from epoch 25)
    clothes_logits = clothes_classifier(features.detach())
    loss_cc = clothes_loss(clothes_logits, clothes)
    if epoch >= 25: opt_cc.zero_grad(); loss_cc.backward(); opt_cc.step()

    # 2. the backbone: identity loss (+ triplet) (+ CAL from epoch 25), main optimizer
    loss = identity_loss(id_logits, pids) + w_tri * triplet_loss(features, pids)
    if epoch >= 25:
        # NOT detached: the CAL gradient reaches the backbone through the (just updated) clothes
        # classifier's weights; those weights also get a gradient here, but the main optimizer
        # does not hold them, and opt_cc.zero_grad() clears it before their next update.
        loss = loss + cal_loss(clothes_classifier(features), clothes, pos_mask)
    opt.zero_grad(); loss.backward(); opt.step()

The main optimizer holds the model's and the identity classifier's parameters only
(`model.parameters()` + `identity_classifier.parameters()`); `opt_cc` holds
`clothes_classifier.parameters()`; both Adam(lr 3.5e-4, weight decay 5e-4), the main one with
the x0.1 steps at epochs 20 and 40 (the reference steps only the main optimizer's lr).
With DLCR data, the clothes loss and CAL loss see the real half of the batch only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SCALE = 16.0
EPSILON = 0.1


def _full(x: torch.Tensor) -> torch.Tensor:
    """At least float32: losses of half-precision (autocast) logits are computed in float32."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class IdentityClassifier(nn.Module):
    """Linear(D, n_pids), weights N(0, 0.001), bias 0 (CAL's Classifier)."""

    def __init__(self, dim: int, num_pids: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, num_pids)
        nn.init.normal_(self.fc.weight, std=0.001)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


class ClothesClassifier(nn.Module):
    """Cosine classifier: cos(f, w_j) for every training clothing class (CAL's NormalizedClassifier)."""

    def __init__(self, dim: int, num_clothes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_clothes, dim))
        with torch.no_grad():  # the reference's init: uniform, then rows rescaled to norm 1
            self.weight.uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))


def identity_loss(logits: torch.Tensor, pids: torch.Tensor, eps: float = EPSILON) -> torch.Tensor:
    """Cross-entropy with label smoothing: targets (1 - eps) onehot + eps / num_classes, mean over
    the batch (the same as CAL's CrossEntropyWithLabelSmooth)."""
    return F.cross_entropy(_full(logits), pids, label_smoothing=eps)


def clothes_loss(cos_logits: torch.Tensor, clothes: torch.Tensor, s: float = SCALE, m: float = 0.0) -> torch.Tensor:
    """CosFace loss of the clothes classifier (scale 16, margin 0): CE over s (cos - m [j = c_i])."""
    margin = F.one_hot(clothes, cos_logits.shape[1]).to(cos_logits.dtype) * m
    return F.cross_entropy(s * (_full(cos_logits) - margin), clothes)


def positive_mask(pid2clothes: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    """B x num_clothes bool: S+(i), the clothing classes worn by sample i's identity."""
    return pid2clothes.to(pids.device)[pids].bool()


def cal_loss(logits_cos: torch.Tensor, clothes: torch.Tensor, pos_mask: torch.Tensor, s: float = SCALE,
             eps: float = EPSILON) -> torch.Tensor:
    """The clothes-based adversarial loss:

    log p_ij = s z_j - log(exp(s z_j) + sum_{k not in S+(i)} exp(s z_k))
    q_ij = (1 - eps) [j = c_i] + eps / |S+(i)| [j in S+(i)]
    L = -(1/B) sum_i sum_j q_ij log p_ij

    logits_cos: B x C cosines z; clothes: B labels c_i; pos_mask: B x C, true on S+(i).
    """
    z = s * _full(logits_cos)
    pos = pos_mask.bool()
    # A large finite fill, not -inf: a row without negatives then gets log p = 0 and finite gradients.
    neg_lse = torch.logsumexp(z.masked_fill(pos, torch.finfo(z.dtype).min), dim=1, keepdim=True)
    log_p = z - torch.logaddexp(z, neg_lse)
    own = F.one_hot(clothes, z.shape[1]).to(z.dtype)
    pos_f = pos.to(z.dtype)
    q = (1 - eps) * own + eps * pos_f / pos_f.sum(1, keepdim=True)
    return -(q * log_p).sum(1).mean()


def triplet_loss(features: torch.Tensor, pids: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss on cosine distance 1 - cos (CAL's TripletLoss): mean over anchors of
    relu(hardest positive distance - hardest negative distance + margin). An anchor's hardest
    positive may be itself (distance 0); an anchor without negatives adds 0."""
    f = F.normalize(_full(features), dim=1)
    dist = 1 - f @ f.t()
    same = pids.view(-1, 1) == pids.view(1, -1)
    # max/min (one index each, as the reference), not amax/amin, which split the gradient among
    # ties, and ties are common: PK batches repeat images of identities with fewer than K.
    hardest_pos = dist.masked_fill(~same, float("-inf")).max(1).values
    hardest_neg = dist.masked_fill(same, float("inf")).min(1).values
    return F.relu(hardest_pos - hardest_neg + margin).mean()
