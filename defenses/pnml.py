"""Adversarial pNML (Pesso, Bibas and Feder, 2021): a test-time refinement wrapper.

For every label i the input is refined by one targeted sign-gradient step of strength lambda,
x_i = x - lambda * sign(grad_x CE(f(x), i)) (the paper's eq. 9), the model's probability of i on
x_i is kept (eq. 11) and the kept probabilities are normalised (eq. 12). All hypotheses run in one
batched pass: the input is replicated once per label, one forward and one backward give every
refinement direction, and one more forward scores the refined inputs (about two forward passes
and one backward pass, as the paper notes). ``top_k`` keeps only the k most likely labels of a
plain first pass (the others get probability 0).

The wrapper returns log q, which are valid logits (softmax(log q) = q). The refinement direction
is computed on a detached copy of the input, so autograd through the wrapper treats it as a
constant: the wrapper's gradient is the paper's adaptive attack gradient (BPDA with the identity
for the refinement), not the masked end-to-end one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AdversarialPNML(nn.Module):
    def __init__(self, base: nn.Module, lam: float, num_classes: int = 10, top_k: int | None = None) -> None:
        super().__init__()
        if top_k is not None and not 1 <= top_k <= num_classes:
            raise ValueError("top_k must be between 1 and the number of classes")
        self.base, self.lam, self.num_classes, self.top_k = base, float(lam), num_classes, top_k

    def candidate_labels(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K) labels to refine towards: all classes, or the top-k of a plain pass."""
        b = x.shape[0]
        if self.top_k is None:
            return torch.arange(self.num_classes, device=x.device).expand(b, -1)
        with torch.no_grad():
            return self.base(x).topk(self.top_k, dim=1).indices

    def refinement_directions(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """sign(grad_x CE(f(x), label)) for every (sample, label) pair, shape (B, K, ...)."""
        b, k = labels.shape
        with torch.enable_grad():
            rep = x.detach().unsqueeze(1).expand(b, k, *x.shape[1:]).reshape(b * k, *x.shape[1:])
            rep = rep.clone().requires_grad_(True)
            loss = F.cross_entropy(self.base(rep), labels.reshape(-1), reduction="sum")
            grad = torch.autograd.grad(loss, rep)[0]
        return grad.sign().reshape(b, k, *x.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = self.candidate_labels(x)
        b, k = labels.shape
        direction = self.refinement_directions(x, labels)
        refined = x.unsqueeze(1) - self.lam * direction  # gradient flows to x through the identity
        logp = F.log_softmax(self.base(refined.reshape(b * k, *x.shape[1:])), dim=1).reshape(b, k, -1)
        kept = logp.gather(2, labels.unsqueeze(2)).squeeze(2)  # log p_i(x_i)
        kept = kept - torch.logsumexp(kept, dim=1, keepdim=True)  # log q (eq. 12)
        if self.top_k is None:
            return kept
        # labels outside the top-k get probability ~0 (a large finite negative logit keeps gradients finite)
        out = torch.full((b, self.num_classes), -1e4, device=x.device, dtype=kept.dtype)
        return out.scatter(1, labels, kept)


def naive_pnml(base: nn.Module, x: torch.Tensor, lam: float, num_classes: int = 10) -> torch.Tensor:
    """Reference: the per-sample, per-label loop of eqs. 9-12 (probabilities q, for tests)."""
    out = torch.zeros(x.shape[0], num_classes)
    for n in range(x.shape[0]):
        p = []
        for i in range(num_classes):
            xi = x[n:n + 1].clone().requires_grad_(True)
            loss = F.cross_entropy(base(xi), torch.tensor([i], device=x.device))
            g = torch.autograd.grad(loss, xi)[0]
            with torch.no_grad():
                p.append(F.softmax(base(x[n:n + 1] - lam * g.sign()), dim=1)[0, i])
        probs = torch.stack(p)
        out[n] = probs / probs.sum()
    return out
