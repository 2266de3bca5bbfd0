"""Training objectives of the papers, written from their equations.

All take logits (and labels) and return a scalar mean over the batch.
* Madry PGD-AT: CE(f(x_adv), y).
* PAT (uncertainty paper, eq. 2): alpha * CE(f(x), y) + (1 - alpha) * CE(f(x_adv), y).
* TRADES (Zhang et al., 2019): CE(f(x), y) + beta * KL(p(x) || p(x_adv)).
* MART (Wang et al., 2020, eq. 8-9): BCE(p(x_adv), y) + lambda * KL(p(x) || p(x_adv)) * (1 - p_y(x)),
  with BCE = -log p_y(x_adv) - log(1 - max_{k != y} p_k(x_adv)).
* MMA (Ding et al., 2020) as the MART paper's Table 1 writes it; RCE (Pang et al., 2018, eq. 4);
  ADP (Pang et al., 2019): members' CE - alpha * ensemble entropy - beta * log ensemble diversity.

The CE terms of PAT and TRADES (and plain training) can be replaced by a regularised base loss
(:func:`base_loss`): label smoothing (uncertainty paper eq. 6; Shafahi et al.'s y_warm with the
same formula), entropy maximisation EntM (uncertainty paper eq. 4: CE - lambda * H(p)) and logit
squeezing (Shafahi et al. eq. 5: sum over the batch of CE + beta * ||Z||_F, the Frobenius norm of
the batch's logits; divided by the batch size here, so the CE term stays a mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_TINY = 1e-12


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of softmax(logits), per sample (nats)."""
    logp = F.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def base_loss(logits: torch.Tensor, y: torch.Tensor, ls: float = 0.0, entm: float = 0.0,
              squeeze: float = 0.0) -> torch.Tensor:
    """Mean CE (against y - ls * (y - uniform) when ls > 0) - entm * mean H(p) + squeeze * ||Z||_F / B."""
    if ls:
        logp = F.log_softmax(logits, dim=1)
        target = F.one_hot(y, logits.shape[1]).to(logp.dtype) * (1.0 - ls) + ls / logits.shape[1]
        loss = -(target * logp).sum(dim=1).mean()
    else:
        loss = F.cross_entropy(logits, y)
    if entm:
        loss = loss - entm * entropy(logits).mean()
    if squeeze:
        loss = loss + squeeze * torch.linalg.norm(logits) / logits.shape[0]
    return loss


def pat(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, alpha: float,
        **base: float) -> torch.Tensor:
    return alpha * base_loss(logits_clean, y, **base) + (1.0 - alpha) * base_loss(logits_adv, y, **base)


def mma(logits_clean: torch.Tensor, logits_margin: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MMA (Ding et al., 2020; MART paper Table 1): CE at the per-sample margin point for correctly
    classified inputs, CE on the clean input for misclassified ones."""
    correct = logits_clean.argmax(1) == y
    per = torch.where(correct, F.cross_entropy(logits_margin, y, reduction="none"),
                      F.cross_entropy(logits_clean, y, reduction="none"))
    return per.mean()


def kl_per_sample(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per sample, for p = softmax(logits_p), q = softmax(logits_q)."""
    logp = F.log_softmax(logits_p, dim=1)
    logq = F.log_softmax(logits_q, dim=1)
    return (logp.exp() * (logp - logq)).sum(dim=1)


def trades(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float,
           **base: float) -> torch.Tensor:
    return base_loss(logits_clean, y, **base) + beta * kl_per_sample(logits_clean, logits_adv).mean()


def mart(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    p_adv = F.softmax(logits_adv, dim=1)
    p_clean = F.softmax(logits_clean, dim=1)
    true_adv = p_adv.gather(1, y[:, None]).squeeze(1)
    other = p_adv.scatter(1, y[:, None], 0.0).amax(dim=1)
    bce = -torch.log(true_adv + _TINY) - torch.log(1.0 - other + _TINY)
    weight = 1.0 - p_clean.gather(1, y[:, None]).squeeze(1)
    return bce.mean() + lam * (kl_per_sample(logits_clean, logits_adv) * weight).mean()


def rce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reverse cross-entropy (RCE paper eq. 4): -R_y^T log softmax(Z), R_y uniform 1/(L-1) off the true class.

    Minimising it gives a *reverse* classifier; predictions then come from the reversed logits -Z.
    """
    k = logits.shape[1]
    logp = F.log_softmax(logits, dim=1)
    reverse = torch.full_like(logp, 1.0 / (k - 1)).scatter(1, y[:, None], 0.0)
    return -(reverse * logp).sum(dim=1).mean()


def ensemble_entropy(member_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample Shannon entropy of the ensemble's mean prediction; member_logits is (K, B, L)."""
    mean_p = F.softmax(member_logits, dim=2).mean(dim=0)
    return -(mean_p * torch.log(mean_p + _TINY)).sum(dim=1)


def ensemble_log_diversity(member_logits: torch.Tensor, y: torch.Tensor, det_offset: float = 1e-6) -> torch.Tensor:
    """Per-sample log ED of ADP (Pang et al., 2019): log det(M^T M + det_offset * I).

    M's K columns are the members' non-maximal predictions (the probability vector without the
    true class y), each normalised to unit L2 norm, so det(M^T M) is the squared volume they span.
    ``det_offset`` keeps the log finite when members agree (the ADP paper's numerical offset).
    """
    k, b, n = member_logits.shape
    p = F.softmax(member_logits, dim=2)  # (K, B, L)
    keep = torch.ones(b, n, dtype=torch.bool, device=p.device).scatter(1, y[:, None], False)
    non_y = p.permute(1, 0, 2)[keep[:, None, :].expand(b, k, n)].view(b, k, n - 1)  # (B, K, L-1)
    non_y = non_y / non_y.norm(dim=2, keepdim=True).clamp_min(_TINY)
    gram = non_y @ non_y.transpose(1, 2) + det_offset * torch.eye(k, device=p.device, dtype=p.dtype)
    return torch.logdet(gram)


def adp(member_logits: torch.Tensor, y: torch.Tensor, alpha: float, beta: float,
        det_offset: float = 1e-6) -> torch.Tensor:
    """ADP: sum_k CE(f_k(x), y) - alpha * H(mean p) - beta * log ED, averaged over the batch."""
    ce_sum = sum(F.cross_entropy(z, y) for z in member_logits)
    return (ce_sum - alpha * ensemble_entropy(member_logits).mean()
            - beta * ensemble_log_diversity(member_logits, y, det_offset).mean())
