"""DeepAR's network and likelihoods in PyTorch (imported only when a DeepAR job runs).

The network is GluonTS's ``DeepARModel``: an LSTM over [lagged scaled targets, static
embeddings, log(scale), time features, age, dynamic features], projected to a likelihood's
arguments. Log-probabilities are written out (checked against scipy in the unit tests);
sampling uses ``torch.distributions``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

LIKELIHOODS = ("student-t", "gaussian", "negative-binomial")
_N_ARGS = {"student-t": 3, "gaussian": 2, "negative-binomial": 2}


class DeepARNet(nn.Module):
    def __init__(self, input_size: int, num_cells: int, num_layers: int, dropout_rate: float, likelihood: str,
                 cardinalities: list[int], embedding_dims: list[int]):
        super().__init__()
        self.likelihood = likelihood
        self.embed = nn.ModuleList(nn.Embedding(c, d) for c, d in zip(cardinalities, embedding_dims))
        self.rnn = nn.LSTM(input_size, num_cells, num_layers, dropout=dropout_rate if num_layers > 1 else 0.0,
                           batch_first=True)
        self.proj = nn.Linear(num_cells, _N_ARGS[likelihood])
        # one-layer templates that run the LSTM's layers one by one with given dropout masks
        # (on the meta device: no weights of their own, no draws from the RNG that seeds the
        # network's initial weights); a plain tuple, so they are not parameters
        self._layers = tuple(nn.LSTM(input_size if i == 0 else num_cells, num_cells, 1, batch_first=True,
                                     device="meta") for i in range(num_layers))

    def static(self, cats: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """(B, E + 1): the category embeddings and log(scale)."""
        parts = [emb(cats[:, i]) for i, emb in enumerate(self.embed)]
        return torch.cat(parts + [scale.log()[:, None]], dim=1)

    def forward(self, x: torch.Tensor, state=None, dropout_masks: torch.Tensor | None = None):
        """``dropout_masks`` (layers - 1, B, T, cells), already divided by the keep rate: the
        dropout between layers that the LSTM would otherwise draw from the global RNG (a
        window's mask then depends on the window, not on the batch it is computed in)."""
        if dropout_masks is None:
            out, state = self.rnn(x, state)
        else:
            out = self._masked(x, dropout_masks)
            state = None
        return distribution_args(self.likelihood, self.proj(out)), state

    def _masked(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        params = dict(self.rnn.named_parameters())
        out = x
        for i, layer in enumerate(self._layers):
            if i:
                out = out * masks[i - 1]
            own = {name[: -len(f"_l{i}")] + "_l0": p for name, p in params.items() if name.endswith(f"_l{i}")}
            out, _ = functional_call(layer, own, (out,))
        return out


def distribution_args(likelihood: str, raw: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """GluonTS's domain maps: student-t (df = 2 + softplus, loc, scale = softplus),
    gaussian (loc, softplus), negative binomial (total_count = softplus, logits)."""
    if likelihood == "student-t":
        return (2.0 + F.softplus(raw[..., 0]), raw[..., 1],
                F.softplus(raw[..., 2]).clamp_min(torch.finfo(raw.dtype).eps))
    if likelihood == "gaussian":
        return raw[..., 0], F.softplus(raw[..., 1]).clamp_min(torch.finfo(raw.dtype).eps)
    return F.softplus(raw[..., 0]).clamp_min(torch.finfo(raw.dtype).eps), raw[..., 1]


def log_prob(likelihood: str, args: tuple[torch.Tensor, ...], y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log p(y) of values ``y`` in the data's units; ``scale`` the series' mean scale
    (broadcast over time). Continuous likelihoods live in scaled units (y / scale, with the
    Jacobian -log scale); the negative binomial's mean is multiplied by the scale."""
    if likelihood == "negative-binomial":
        r, logits = args
        logits = logits + scale.log()
        return (torch.lgamma(y + r) - torch.lgamma(r) - torch.lgamma(y + 1.0)
                + r * F.logsigmoid(-logits) + y * F.logsigmoid(logits))
    z = y / scale
    if likelihood == "gaussian":
        mu, s = args
        return -0.5 * ((z - mu) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi) - scale.log()
    df, mu, s = args
    u = (z - mu) / s
    return (torch.lgamma((df + 1) / 2) - torch.lgamma(df / 2) - 0.5 * torch.log(df * math.pi) - s.log()
            - (df + 1) / 2 * torch.log1p(u * u / df) - scale.log())


def sample(likelihood: str, args: tuple[torch.Tensor, ...], scale: torch.Tensor) -> torch.Tensor:
    """One draw per element, in the data's units (uses the global torch RNG: callers fork it)."""
    if likelihood == "negative-binomial":
        r, logits = args
        return torch.distributions.NegativeBinomial(total_count=r, logits=logits + scale.log()).sample()
    if likelihood == "gaussian":
        mu, s = args
        return (mu + s * torch.randn_like(mu)) * scale
    df, mu, s = args
    return torch.distributions.StudentT(df, mu, s).sample() * scale


__all__ = ["DeepARNet", "LIKELIHOODS", "distribution_args", "log_prob", "sample"]
