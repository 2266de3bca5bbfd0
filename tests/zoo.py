"""The zoo of gradient-masking models and the reference attacks that see through each of them.

One small MNIST MLP, adversarially trained in seconds (:func:`train_honest`), is wrapped by broken
"defenses" that mask its gradients in the ways the literature catalogues (Athalye, Carlini and Wagner
2018, "Obfuscated Gradients Give a False Sense of Security"; Carlini et al. 2019, "On Evaluating
Adversarial Robustness"; Tramèr, Carlini, Brendel and Madry 2020, "On Adaptive Attacks to Adversarial
Example Defenses"):

* shattered gradients: :class:`Quantise` (rounded inputs), :class:`StepActivation` (rounded hidden
  activations) and :class:`Purified` (a test-time denoising optimisation run on a detached copy);
* no gradient at all: :class:`Detached`;
* vanishing gradients: :class:`Saturated` (logits x 1,000) and :class:`ClampedLogits` (a hard clamp of
  scaled logit gaps), plus :class:`Probabilities` (softmax outputs, a second softmax in the attack);
* stochastic gradients: :class:`Noisy` (Gaussian input noise on every pass, undeclared);
* gradients cut by a detector: :class:`DetectorGated` (inputs that look perturbed are detached).

Each takes [0, 1] images (N, 1, 28, 28) and returns 10 logits (probabilities for
:class:`Probabilities`); each is deterministic except :class:`Noisy`, and keeps the base model's
clean accuracy (most compute exactly its function). None declares ``bpda_approx``: the benchmark
must find the truth without being told, while :func:`reference_accuracy` knows each mechanism and
attacks it the way the papers above prescribe (BPDA, EOT, attacking the unmasked function), so its
number is the robust accuracy an evaluation should reach. It is plain torch, independent of the
repository's ``attacks`` package, so a bug there cannot hide in both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from bench.protocol.protocols import AttackSpec, Protocol

EPS = (0.05, 0.1, 0.15, 0.2)
ZOO_PROTOCOL = Protocol(  # small enough to evaluate every zoo model in seconds on one CPU thread
    "test-zoo", "mnist", "test", 60, "Linf", EPS, 0.1,
    (AttackSpec("fgsm", "fgsm", {}, seed=0),
     AttackSpec("pgd-ce", "pgd", {"loss": "ce", "steps": 20, "rel_step_size": 0.1, "restarts": 1,
                                  "random_start": True}, seed=1),
     AttackSpec("pgd-cw", "pgd", {"loss": "cw", "steps": 20, "rel_step_size": 0.1, "restarts": 1,
                                  "random_start": True}, seed=2),
     AttackSpec("random-search", "random-search", {"n_draws": 200}, seed=3)),
    chunk_size=60,
)

Surrogate = Callable[[torch.Tensor], torch.Tensor]  # differentiable stand-in: images -> logits


# ---- the base model ------------------------------------------------------------------------------

def mlp() -> nn.Module:
    """Flatten, 784 -> 128 ReLU -> 10: small enough to train adversarially and attack hard on a CPU."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


def train_honest() -> nn.Module:
    """PGD-AT (Madry et al. 2018; eps 0.1, 5 steps of 0.03, random start) for 3 epochs of 3,000 images.

    Deterministic: seed 0 in a forked RNG (the caller's random state is left as it was) and one
    torch thread while it trains (CPU floating point depends on the thread count), so every call
    returns the same weights on a given machine. About 2.5 s; 84% clean accuracy on MNIST test
    images [0:200].
    """
    from bench.protocol.data import load_split

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            x, y = load_split("mnist", "train")
            x, y = x[:3000], y[:3000]
            model = mlp()
            opt = torch.optim.Adam(model.parameters(), lr=2e-3)
            for _ in range(3):
                for i in range(0, 3000, 100):
                    xb, yb = x[i:i + 100], y[i:i + 100]
                    xa = (xb + torch.empty_like(xb).uniform_(-0.1, 0.1)).clamp(0, 1)
                    for _ in range(5):
                        xa.requires_grad_(True)
                        g, = torch.autograd.grad(F.cross_entropy(model(xa), yb), xa)
                        xa = torch.min(torch.max(xa.detach() + 0.03 * g.sign(), xb - 0.1), xb + 0.1).clamp(0, 1)
                    loss = F.cross_entropy(model(xa), yb)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


# ---- the original five -----------------------------------------------------------------------------

class Quantise(nn.Module):
    """Inputs rounded to 5 grey levels before the base model: the input gradient is zero almost
    everywhere (shattered gradients, Athalye et al. 2018). Reference: BPDA with the identity."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(torch.round(x * 4) / 4)


class Detached(Quantise):
    """The base model on a detached input (plus 0 x the input, so a graph exists): zero input gradient.
    Reference: attack the base model, which is the same function."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x.detach()) + 0.0 * x.flatten(1).sum(1, keepdim=True)


class Probabilities(Quantise):
    """Softmax outputs: a cross-entropy attack applies a second softmax and its gradient shrinks
    (Carlini et al. 2019). Reference: PGD on the log of the outputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.base(x), dim=1)


class Noisy(Quantise):
    """Gaussian input noise (sigma 0.3) on every pass, not declared: one-sample gradients are noisy
    (stochastic gradients, Athalye et al. 2018). Reference: EOT over 20 draws, judged by a majority
    of 10 draws."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base((x + 0.3 * torch.randn_like(x)).clamp(0, 1))


class Saturated(Quantise):
    """Logits x 1,000: the softmax saturates and the cross-entropy gradient underflows to exactly zero
    (vanishing gradients). Reference: attack the unscaled base model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1000.0 * self.base(x)


# ---- four more mechanisms -------------------------------------------------------------------------

class Round(nn.Module):
    """Rounds to a grid of ``step``: a step function, so its derivative is zero wherever it exists.

    Deliberately no ``bpda_approx``: the benchmark is not told that the identity approximates it."""

    def __init__(self, step: float) -> None:
        super().__init__()
        self.step = step

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.round(h / self.step) * self.step


class StepActivation(nn.Module):
    """The base MLP with its hidden ReLU activations rounded to multiples of 0.5.

    A non-differentiable activation inside the network (the shattered gradients of Athalye et al.
    2018, like the quantised activations of several broken defenses): every input gradient is
    exactly zero, although the function is nearly the base model's (the hidden units range up to
    about 7, so the grid costs well under a point of clean accuracy). Reference: BPDA (straight-through,
    identity backward) on the rounding, and the base model without it. Trips bad-gradients
    (also unbounded-attack and black-box-wins under the zoo protocol).
    """

    def __init__(self, base: nn.Module, step: float = 0.5) -> None:
        super().__init__()
        self.base = base
        self.round = Round(step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat, fc1, relu, fc2 = self.base
        return fc2(self.round(relu(fc1(flat(x)))))


class ClampedLogits(nn.Module):
    """Logit gaps to the top class, scaled by 100 and hard-clamped at -10: out = max(100 (z - max z), -10).

    Output saturation that is not a plain scaling (unlike :class:`Saturated`, rescaling the outputs
    or switching to a margin loss does not help): the top output is 0 whatever the input, and every
    class more than 0.1 logit below the top sits at the clamp, so on every sample whose runner-up
    trails by more than 0.1 the input gradient of any loss is exactly zero (vanishing gradients,
    Athalye et al. 2018; Carlini et al. 2019 ask for a check of exactly this). The map keeps the
    order of the logits, so predictions are the base model's. Reference: attack the base model.
    Trips bad-gradients (also unbounded-attack and black-box-wins under the zoo protocol).
    """

    def __init__(self, base: nn.Module, scale: float = 100.0, floor: float = 10.0) -> None:
        super().__init__()
        self.base, self.scale, self.floor = base, scale, floor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.base(x)
        return torch.clamp(self.scale * (z - z.max(1, keepdim=True).values), min=-self.floor)


def denoise(x: torch.Tensor, steps: int = 10, lr: float = 0.2, lam: float = 0.1,
            create_graph: bool = False) -> torch.Tensor:
    """``steps`` of gradient descent from ``x`` on E(u) = 1/2 ||u - x||^2 + lam TV(u), clipped to [0, 1].

    TV is the smoothed total variation sum sqrt(dx^2 + dy^2 + 1e-3) over forward differences (Rudin,
    Osher and Fatemi 1992), the classic image denoiser; its gradient is written out, so the loop is
    cheap. With ``create_graph`` the unrolled descent stays differentiable in ``x`` (for the reference
    attack); otherwise it runs on a detached copy, as a test-time defense would run it.
    """
    x0 = x if create_graph else x.detach()
    u = x0
    for _ in range(steps):
        dx = u[..., 1:, :-1] - u[..., :-1, :-1]
        dy = u[..., :-1, 1:] - u[..., :-1, :-1]
        norm = torch.sqrt(dx ** 2 + dy ** 2 + 1e-3)
        px, py = dx / norm, dy / norm
        tv = F.pad(-(px + py), (0, 1, 0, 1)) + F.pad(px, (0, 1, 1, 0)) + F.pad(py, (1, 0, 0, 1))
        u = (u - lr * ((u - x0) + lam * tv)).clamp(0, 1)
    return u


class Purified(nn.Module):
    """Test-time purification: a few gradient steps of total-variation denoising, then the base model.

    The denoising optimisation runs on a detached copy of the input (as PixelDefend- or
    Defense-GAN-style purifiers do in practice, Athalye et al. 2018), so the classifier's output does
    not depend on the input's graph and the input gradient is zero. Unlike :class:`Detached`, the
    function is not the base model's: the purifier changes what an attacker must fool. Reference:
    BPDA with the identity through the purifier, the unrolled (fully differentiable) purifier, and
    the base model alone. Trips bad-gradients (also unbounded-attack and black-box-wins under the
    zoo protocol).
    """

    def __init__(self, base: nn.Module, steps: int = 10, lr: float = 0.2, lam: float = 0.1) -> None:
        super().__init__()
        self.base, self.steps, self.lr, self.lam = base, steps, lr, lam

    def purify(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        return denoise(x, self.steps, self.lr, self.lam, create_graph)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # + 0 x the input, as in Detached: without any graph to the input the benchmark's FGSM raises
        # a RuntimeError ("does not require grad") instead of measuring anything.
        return self.base(self.purify(x)) + 0.0 * x.flatten(1).sum(1, keepdim=True)


def faint_fraction(x: torch.Tensor, margin: float = 0.02) -> torch.Tensor:
    """Per image, the share of pixels strictly between ``margin`` and 1 - ``margin``.

    Clean MNIST digits are near-binary (at most 20% such pixels on the first 1,000 test images);
    uniform noise of amplitude 0.05 or more, such as a PGD random start, lifts it above 30%."""
    return ((x > margin) & (x < 1 - margin)).flatten(1).float().mean(1)


class DetectorGated(nn.Module):
    """A perturbation detector that cuts the gradient of inputs it finds suspicious.

    Inputs with more than 25% faint pixels (:func:`faint_fraction`) are passed to the base model
    detached: predictions are always the base model's, but gradients are zero at every randomly
    started PGD iterate, while clean inputs keep their true gradient. So the model-facts probe
    (gradients at clean inputs) sees nothing wrong, FGSM (one gradient at the clean input) works and
    PGD with a random start does not: the tell-tale signs of Carlini et al. 2019 (single-step beats
    iterative, an unbounded attack fails). A detector mechanism as in Carlini and Wagner 2017,
    "Adversarial Examples Are Not Easily Detected". Reference: attack the base model. Trips
    single-step-wins and unbounded-attack, not bad-gradients.
    """

    def __init__(self, base: nn.Module, threshold: float = 0.25) -> None:
        super().__init__()
        self.base, self.threshold = base, threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        suspicious = (faint_fraction(x) > self.threshold).view(-1, *([1] * (x.dim() - 1)))
        return self.base(torch.where(suspicious, x.detach(), x))


ZOO: dict[str, type[nn.Module]] = {c.__name__: c for c in (
    Quantise, Detached, Probabilities, Noisy, Saturated, StepActivation, ClampedLogits, Purified, DetectorGated)}


# ---- reference attacks --------------------------------------------------------------------------------

def _straight_through(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """fn(x) on the forward pass, the identity on the backward pass (BPDA, Athalye et al. 2018)."""
    return x + (fn(x) - x).detach()


def _bpda_step_activation(model: StepActivation) -> Surrogate:
    flat, fc1, relu, fc2 = model.base
    return lambda x: fc2(_straight_through(relu(fc1(flat(x))), model.round))


def _log_outputs(model: nn.Module) -> Surrogate:
    tiny = torch.finfo(torch.float32).tiny
    return lambda x: torch.log(model(x).clamp_min(tiny))


def _base(model: nn.Module) -> Surrogate:
    return model.base  # type: ignore[return-value]


def surrogates(name: str, model: nn.Module) -> list[Surrogate]:
    """The differentiable stand-ins the reference attack follows for each mechanism (all are tried).

    Success is always judged on ``model`` itself, so a stand-in only has to point in a good direction.
    """
    m = model
    table: dict[str, Callable[[], list[Surrogate]]] = {
        "honest": lambda: [m],
        "Quantise": lambda: [lambda x: m.base(_straight_through(x, lambda v: torch.round(v * 4) / 4)), _base(m)],
        "Detached": lambda: [_base(m)],
        "Probabilities": lambda: [_log_outputs(m)],
        "Noisy": lambda: [m],  # EOT: each pass draws its own noise
        "Saturated": lambda: [_base(m)],
        "StepActivation": lambda: [_bpda_step_activation(m), _base(m)],  # type: ignore[arg-type]
        "ClampedLogits": lambda: [_base(m)],
        "Purified": lambda: [lambda x: m.base(_straight_through(x, m.purify)),
                             lambda x: m.base(m.purify(x, create_graph=True)), _base(m)],
        "DetectorGated": lambda: [_base(m)],
    }
    if name not in table:
        raise KeyError(f"no reference attack for {name!r}; known: {sorted(table)}")
    return table[name]()


def _loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample loss to maximise: cross-entropy, or the CW margin max_{j != y} z_j - z_y."""
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - true


def _project(xa: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(xa, x - eps), x + eps).clamp(0, 1)


def _runs(restarts: int, steps: int, eps: float) -> list[tuple[str, float]]:
    """(loss, step size) per run: CE and CW, ``restarts`` each, alternating eps / 10 and 2.5 eps / steps."""
    return [(loss, eps / 10 if r % 2 == 0 else 2.5 * eps / steps) for loss in ("ce", "cw") for r in range(restarts)]


def _pgd_deterministic(model: nn.Module, surrogate: Surrogate, x: torch.Tensor, y: torch.Tensor, eps: float,
                       loss: str, steps: int, alpha: float) -> torch.Tensor:
    """PGD with a random start following ``surrogate``; True where ``model`` misclassified any iterate."""
    xa = _project(x + eps * (2 * torch.rand_like(x) - 1), x, eps)
    broken = torch.zeros(x.shape[0], dtype=torch.bool)
    for t in range(steps + 1):
        with torch.no_grad():
            broken |= model(xa).argmax(1) != y
        if t == steps or bool(broken.all()):
            break
        xa.requires_grad_(True)
        g, = torch.autograd.grad(_loss(surrogate(xa), y, loss).sum(), xa)
        xa = _project(xa.detach() + alpha * g.sign(), x, eps)
    return broken


def _votes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
    """Per sample, how many of ``draws`` independent passes classify it correctly."""
    with torch.no_grad():
        pred = model(x.repeat(draws, *([1] * (x.dim() - 1)))).argmax(1).view(draws, -1)
    return (pred == y).sum(0)


def _pgd_eot(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, loss: str, steps: int, alpha: float,
             eot: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD with EOT (Athalye et al. 2018): the gradient of the loss of the mean softmax over ``eot`` draws.

    Returns per sample the iterate whose draws voted least for the true class (ties: lowest mean
    probability of it) and that score, so the caller can keep the best candidate over runs."""
    n = x.shape[0]
    xa = _project(x + eps * (2 * torch.rand_like(x) - 1), x, eps)
    best, best_score = xa.clone(), torch.full((n,), float("inf"))
    for t in range(steps + 1):
        xa.requires_grad_(True)
        logits = model(xa.repeat(eot, *([1] * (x.dim() - 1)))).view(eot, n, -1)
        p = torch.softmax(logits, 2)
        log_mean_p = torch.log(p.mean(0).clamp_min(torch.finfo(p.dtype).tiny))
        with torch.no_grad():
            votes = (logits.argmax(2) == y).float().mean(0)
            score = votes + 1e-3 * p.mean(0).gather(1, y[:, None])[:, 0]
            better = score < best_score
            best[better], best_score[better] = xa.detach()[better], score[better]
        if t == steps:
            break
        g, = torch.autograd.grad(_loss(log_mean_p, y, loss).sum(), xa)
        xa = _project(xa.detach() + alpha * g.sign(), x, eps)
    return best, best_score


def reference_accuracy(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                       steps: int = 100, restarts: int = 2, eot: int = 20, judge_draws: int = 10,
                       seed: int = 0) -> float:
    """Percent of all given samples that ``model`` gets right and that survive the reference attack.

    ``name`` is the mechanism (a :data:`ZOO` key, or ``"honest"`` for the base model). For every
    differentiable stand-in of :func:`surrogates`, PGD with a random start runs ``steps`` steps with the
    cross-entropy and with the CW margin loss, ``restarts`` times each (step size eps / 10, then
    2.5 eps / steps, alternating); a sample counts as broken if ``model`` misclassifies any iterate of
    any run (the per-sample union). A deterministic model's broken samples are not attacked again.

    :class:`Noisy` is attacked with EOT over ``eot`` draws and judged by majority: a sample is robust
    only if ``model`` is right in more than half of ``judge_draws`` passes on its adversarial input, and
    clean-correct by the same rule. Of all runs, the one candidate per sample whose EOT draws voted
    least for the true class is judged, once, so taking the union does not test a random verdict
    many times. Deterministic: seeded in a forked RNG, the caller's random state is left as it was.
    """
    model.eval()
    x, y = x.detach(), y.detach()
    randomized = name == "Noisy"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if randomized:
            correct = _votes(model, x, y, judge_draws) * 2 > judge_draws
        else:
            with torch.no_grad():
                correct = model(x).argmax(1) == y
        if eps == 0 or not bool(correct.any()):
            return 100.0 * float(correct.sum()) / x.shape[0]
        idx = correct.nonzero()[:, 0]
        xs, ys = x[idx], y[idx]
        if randomized:
            best, best_score = xs.clone(), torch.full((idx.numel(),), float("inf"))
            for k, (loss, alpha) in enumerate(_runs(restarts, steps, eps)):
                torch.manual_seed(seed * 1000 + k)
                cand, score = _pgd_eot(model, xs, ys, eps, loss, steps, alpha, eot)
                better = score < best_score
                best[better], best_score[better] = cand[better], score[better]
            torch.manual_seed(seed * 1000 + 999)
            robust = _votes(model, best, ys, judge_draws) * 2 > judge_draws
        else:
            robust = torch.ones(idx.numel(), dtype=torch.bool)
            k = 0
            for surrogate in surrogates(name, model):
                for loss, alpha in _runs(restarts, steps, eps):
                    torch.manual_seed(seed * 1000 + k)
                    k += 1
                    live = robust.nonzero()[:, 0]
                    if live.numel() == 0:
                        break
                    robust[live] &= ~_pgd_deterministic(model, surrogate, xs[live], ys[live], eps, loss, steps, alpha)
    return 100.0 * float(robust.sum()) / x.shape[0]
