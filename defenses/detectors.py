"""Thresholding detectors of the RCE paper (Pang et al., NeurIPS 2018, section 3.3).

A :class:`DetectorClassifier` wraps a classifier ``net`` and adds a per-sample detector score,
higher meaning more suspicious. The evaluation engine (not the model) sets the threshold on
held-out clean inputs at the protocol's false-positive rate and rejects inputs above it.

Metrics (all computed on the returned predictions F = softmax(forward(x))):
* ``kd``: K-density (Feinman et al., 2017) in the final hidden layer z (the input of the last
  linear layer): KD(x) = mean over training points x_i of the predicted class of
  exp(-||z_i - z||^2 / sigma^2); score = -log KD(x).
* ``confidence``: score = -max_i F_i.
* ``nonme``: non-ME (RCE paper eq. 1), the entropy of the normalised non-maximal elements of F;
  score = -non-ME (normal inputs of an RCE model have high non-ME).

``reverse=True`` returns the reversed logits -Z of an RCE-trained network (its ordinary
predictions); ``net`` itself is what training optimises (see :meth:`training_target`).
The reference features of the training points live in buffers, so they are saved with the
checkpoint and covered by its sha256. ``detector_eta`` is the median score on training points
outside the reference set (the eta of the C&W-wb attack's detector term).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

METRICS = ("kd", "confidence", "nonme")


def last_linear(net: nn.Module) -> nn.Linear:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("a detector needs a network whose last layer is nn.Linear")
    return linears[-1]


def non_me(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample non-ME of softmax(logits): entropy of the non-maximal probabilities, renormalised."""
    p = F.softmax(logits, dim=1)
    top = p.argmax(1, keepdim=True)
    rest = p.scatter(1, top, 0.0)
    rest = rest / rest.sum(1, keepdim=True).clamp_min(1e-30)
    return -(rest * torch.log(rest.clamp_min(1e-30))).sum(1)


def log_kernel_density(z: torch.Tensor, pred: torch.Tensor, ref: torch.Tensor, ref_labels: torch.Tensor,
                       sigma2: float) -> torch.Tensor:
    """log KD(x) per sample: log mean_{i: label_i = pred} exp(-||ref_i - z||^2 / sigma2)."""
    d2 = torch.cdist(z, ref).pow(2)  # (B, R)
    same = ref_labels[None, :] == pred[:, None]
    logk = (-d2 / sigma2).masked_fill(~same, float("-inf"))
    count = same.sum(1).clamp_min(1).to(z.dtype)
    return torch.logsumexp(logk, dim=1) - torch.log(count)


class DetectorClassifier(nn.Module):
    def __init__(self, net: nn.Module, metric: str = "kd", sigma2: float = 1.0, reverse: bool = False,
                 n_ref: int = 1000) -> None:
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"unknown detector metric {metric!r}; known: {', '.join(METRICS)}")
        self.net, self.metric, self.sigma2, self.reverse, self.n_ref = net, metric, float(sigma2), reverse, n_ref
        dim = last_linear(net).in_features
        self.register_buffer("ref_features", torch.zeros(n_ref, dim))
        self.register_buffer("ref_labels", torch.zeros(n_ref, dtype=torch.long))
        self.register_buffer("detector_eta", torch.zeros(()))

    def training_target(self) -> nn.Module:
        """The module the training recipe optimises (raw logits Z, no reversal)."""
        return self.net

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(returned logits, final hidden features) from one pass of ``net``."""
        captured: list[torch.Tensor] = []
        handle = last_linear(self.net).register_forward_hook(lambda _m, inp, _out: captured.append(inp[0]))
        try:
            z = self.net(x)
        finally:
            handle.remove()
        return (-z if self.reverse else z), captured[0].flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        return -z if self.reverse else z

    def detector_score(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample score, higher = more suspicious; differentiable (detector-aware attacks use it)."""
        logits, feats = self.logits_and_features(x)
        return self.score_from(logits, feats)

    def score_from(self, logits: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        if self.metric == "confidence":
            return -F.softmax(logits, dim=1).amax(1)
        if self.metric == "nonme":
            return -non_me(logits)
        return -log_kernel_density(feats, logits.argmax(1), self.ref_features, self.ref_labels, self.sigma2)

    @torch.no_grad()
    def fit_reference(self, x_train: torch.Tensor, y_train: torch.Tensor, batch_size: int = 500,
                      n_eta: int = 1000) -> None:
        """Fill the reference set with the first ``n_ref`` training points (their labels, as Feinman
        et al.) and set ``detector_eta`` to the median KD score of the next ``n_eta`` points."""
        if x_train.shape[0] < self.n_ref + n_eta:
            raise ValueError(f"need {self.n_ref + n_eta} training points for the detector, got {x_train.shape[0]}")
        was_training = self.training
        self.eval()
        dev = self.ref_features.device
        feats = [self.logits_and_features(x_train[i:i + batch_size].to(dev))[1]
                 for i in range(0, self.n_ref, batch_size)]
        self.ref_features.copy_(torch.cat(feats)[: self.n_ref])
        self.ref_labels.copy_(y_train[: self.n_ref].to(dev))
        held = x_train[self.n_ref:self.n_ref + n_eta]
        scores = torch.cat([-log_kernel_density(*self._feats_pred(held[i:i + batch_size].to(dev)),
                                                self.ref_features, self.ref_labels, self.sigma2)
                            for i in range(0, held.shape[0], batch_size)])
        self.detector_eta.fill_(float(scores.median()))
        self.train(was_training)

    def _feats_pred(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = self.logits_and_features(x)
        return feats, logits.argmax(1)

    def with_metric(self, metric: str) -> DetectorClassifier:
        """The same trained network and reference set, thresholded on another metric."""
        other = DetectorClassifier(self.net, metric, self.sigma2, self.reverse, self.n_ref)
        other.load_state_dict(self.state_dict())
        return other.eval()


def detector_factory(architecture: str, metric: str, sigma2: float, reverse: bool, n_ref: int):
    """A named factory (the name enters the recipe hash) building an untrained detector classifier."""
    from defenses.architectures import build_architecture

    def build() -> nn.Module:
        return DetectorClassifier(build_architecture(architecture), metric, sigma2, reverse, n_ref)

    build.__name__ = f"{architecture}+{metric}(s2={sigma2:.4g},n={n_ref}{',rev' if reverse else ''})"
    return build


def threshold_at_fpr(scores: torch.Tensor, fpr: float) -> float:
    """Threshold t such that at most ``fpr`` of ``scores`` exceed it (rejected iff score > t).

    t is the ceil((1 - fpr) * n)-th smallest score: exactly floor(fpr * n) clean inputs are rejected
    when scores are distinct.
    """
    if scores.numel() == 0 or not 0.0 <= fpr < 1.0:
        raise ValueError("threshold_at_fpr needs scores and 0 <= fpr < 1")
    s = scores.flatten().double().sort().values
    k = max(1, math.ceil((1.0 - fpr) * s.numel() - 1e-9))
    return float(s[k - 1])
