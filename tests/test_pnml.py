"""Adversarial pNML: the batched wrapper equals the paper's per-label loop (eqs. 9-12)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from defenses.architectures import CNN4
from defenses.pnml import AdversarialPNML, naive_pnml


def _model() -> CNN4:
    torch.manual_seed(0)
    return CNN4().eval()


def test_batched_equals_naive_loop() -> None:
    base = _model()
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    q = F.softmax(AdversarialPNML(base, lam=0.1)(x), dim=1)
    assert torch.allclose(q, naive_pnml(base, x, 0.1), atol=1e-5)
    assert torch.allclose(q.sum(1), torch.ones(6), atol=1e-5)


def test_lambda_zero_is_the_base_model() -> None:
    """With no refinement, q_i = p_i(x) / sum_j p_j(x) = p_i(x)."""
    base = _model()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        want = F.softmax(base(x), dim=1)
    assert torch.allclose(F.softmax(AdversarialPNML(base, lam=0.0)(x), dim=1), want, atol=1e-5)


def test_top_k_keeps_only_the_first_pass_top_labels() -> None:
    base = _model()
    x = torch.rand(5, 1, 28, 28)
    full = F.softmax(AdversarialPNML(base, lam=0.1)(x), dim=1)
    top = F.softmax(AdversarialPNML(base, lam=0.1, top_k=3)(x), dim=1)
    with torch.no_grad():
        labels = base(x).topk(3, dim=1).indices
    kept = top.gather(1, labels)
    assert torch.allclose(kept.sum(1), torch.ones(5), atol=1e-5)
    # the kept labels keep their relative weights from the full computation
    ref = full.gather(1, labels)
    assert torch.allclose(kept, ref / ref.sum(1, keepdim=True), atol=1e-5)


def test_wrapper_gradient_is_the_bpda_identity_gradient() -> None:
    """d/dx of the wrapper equals the gradient through x - lambda * sign(g) with sign(g) held fixed."""
    base = _model()
    x = torch.rand(3, 1, 28, 28)
    wrapper = AdversarialPNML(base, lam=0.1)
    xg = x.clone().requires_grad_(True)
    g = torch.autograd.grad(wrapper(xg)[:, 0].sum(), xg)[0]
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    direction = wrapper.refinement_directions(x, torch.arange(10).expand(3, -1))
    xr = x.clone().requires_grad_(True)
    refined = xr.unsqueeze(1) - 0.1 * direction
    logp = F.log_softmax(base(refined.reshape(30, 1, 28, 28)), dim=1).reshape(3, 10, 10)
    kept = logp.diagonal(dim1=1, dim2=2)
    out = kept - torch.logsumexp(kept, dim=1, keepdim=True)
    g_ref = torch.autograd.grad(out[:, 0].sum(), xr)[0]
    assert torch.allclose(g, g_ref, atol=1e-6)
