"""The NTM's update step on torch (CPU or CUDA): the negative ELBO, its gradient by autograd,
and the optimizer's step on the flat parameter vector. Imported only by ``NTM.update``, so
that models, snapshots and ``topics`` never need torch."""
from __future__ import annotations

import numpy as np
import torch

from streamlearn.algorithms.ntm import BN_EPS, bn_split
from streamlearn.batch import SparseRows

_B1, _B2, _EPS = 0.99, 0.999, 1e-8  # Adam's high momentum of ProdLDA (Srivastava & Sutton 2017)
#: the share of the way batch normalization's running statistics move towards a training
#: batch's statistics each step
_BN_RATE = 0.1
_ACT = {"softplus": torch.nn.functional.softplus, "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}


class TorchNTM:
    def __init__(self, shapes, activation: str, prior: tuple[float, float], device: str, precision: str):
        self.shapes = shapes
        self.act = _ACT[activation]
        self.m0, self.v0 = prior
        self.dev = torch.device(device)
        self.dtype = torch.float32 if precision == "float32" else torch.float64
        self.n_layers = sum(1 for name, _ in shapes if name.startswith("enc_W"))
        # workers are the unit of parallelism (as for BLAS, see WorkerConfig.blas_threads):
        # torch's intra-op threads spun against the other processes and made a step ~30x slower
        torch.set_num_threads(1)

    # -- tensors ----------------------------------------------------------------------------
    def tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(a), dtype=self.dtype, device=self.dev)  # a copy: pulls are read-only

    def sparse(self, X: SparseRows) -> tuple[tuple, torch.Tensor]:
        """((rows, columns, log(1 + count)) of the stored values for the encoder's first layer,
        the dense counts for the loss)."""
        n, v = len(X), X.n_features
        counts = torch.zeros((n, v), dtype=self.dtype, device=self.dev)
        rows = torch.as_tensor(X.row_ids(), device=self.dev)
        cols = torch.as_tensor(X.indices, device=self.dev)
        vals = torch.as_tensor(X.values, dtype=self.dtype, device=self.dev)
        counts[rows, cols] = vals
        return (rows, cols, torch.log1p(vals)), counts

    def params(self, flat: torch.Tensor | list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The named arrays of the flat vector, or of its pieces (:meth:`pieces`)."""
        parts = flat if isinstance(flat, list) else self.pieces(flat)
        return {name: part.view(shape) for (name, shape), part in zip(self.shapes, parts)}

    def pieces(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(flat, [int(np.prod(shape)) for _, shape in self.shapes]))

    # -- the model --------------------------------------------------------------------------
    def neg_elbo(self, flat: torch.Tensor | list[torch.Tensor], background: torch.Tensor, enc: tuple, counts: torch.Tensor,
                 eps: torch.Tensor, kl_weight: float = 1.0, running: torch.Tensor | None = None, dropout: float = 0.0,
                 gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Per-document (reconstruction, KL) of the negative ELBO with noise ``eps`` and the
        decoder's ``background`` log frequencies (``ntm.log_unigram``), and the
        batch's normalization statistics (None when ``running`` statistics were used).

        The encoder's mean and log variance and the decoder's logits are batch-normalized
        (ProdLDA): with the batch's statistics in training, with the ``running`` ones (the
        state key ``bn``, :func:`bn_layout`) for held-out documents and single-document steps.
        Without it the decoder's logits of frequent words dominated every topic and the
        topics collapsed into one. ``dropout`` drops topic-mixture entries (``gen`` draws them)."""
        p = self.params(flat)
        rows, cols, vals = enc  # the first layer gathers only the rows of the words present
        W0 = p["enc_W0"]
        first = torch.zeros((counts.shape[0], W0.shape[1]), dtype=W0.dtype, device=W0.device)
        h = self.act(first.index_add(0, rows, W0[cols] * vals[:, None]) + p["enc_b0"])
        for i in range(1, self.n_layers):
            h = self.act(h @ p[f"enc_W{i}"] + p[f"enc_b{i}"])
        k = p["mu_b"].shape[0]
        stats = [] if running is None else None
        enc_mean, enc_var, dec_mean, dec_var = (None,) * 4 if running is None else bn_split(running, k)
        ml = _normalize(torch.cat([h @ p["mu_W"] + p["mu_b"], h @ p["lv_W"] + p["lv_b"]], 1), enc_mean, enc_var, stats)
        mu, lv = ml[:, :k], ml[:, k:]
        z = mu + torch.exp(0.5 * lv) * eps
        mix = torch.softmax(z, dim=1)
        if dropout:
            keep = torch.rand(mix.shape, generator=gen, dtype=mix.dtype).to(mix.device) >= dropout
            mix = mix * keep / (1.0 - dropout)
        logp = torch.log_softmax(_normalize(mix @ p["beta"], dec_mean, dec_var, stats) + p["bg"] + background, dim=1)
        rec = -(counts * logp).sum(1)
        kl = 0.5 * (torch.exp(lv) / self.v0 + (mu - self.m0) ** 2 / self.v0 - 1.0 + np.log(self.v0) - lv).sum(1)
        batch_stats = None if stats is None else torch.cat([stats[0], stats[2], stats[1], stats[3]]).detach()
        return rec, kl * kl_weight, batch_stats

    def noise(self, n: int, k: int, seed: int) -> torch.Tensor:
        g = torch.Generator(device="cpu").manual_seed(seed)
        return torch.randn((n, k), generator=g, dtype=self.dtype).to(self.dev)

    def heldout(self, theta: np.ndarray, bn: np.ndarray, background: np.ndarray, X: SparseRows, seed: int) -> tuple[float, float]:
        """(sum of the negative ELBO, word count) of held-out documents, one latent sample each."""
        with torch.no_grad():
            enc, counts = self.sparse(X)
            k = self.shapes[-3][1][0]
            rec, kl, _ = self.neg_elbo(self.tensor(theta), self.tensor(background), enc, counts, self.noise(len(X), k, seed),
                                       running=self.tensor(bn))
            return float((rec + kl).sum()), float(X.values.sum())

    def train(self, flat: dict[str, np.ndarray], background: np.ndarray, X: SparseRows, t0: float, n0: float, algo) -> tuple[dict, int]:
        """Local steps over ``X`` in mini-batches from the pulled arrays ``flat`` (the
        parameters, the optimizer's accumulators, the normalization statistics ``bn``);
        returns the arrays after them (numpy, float64) and the number of steps."""
        state = {key: self.tensor(a) for key, a in flat.items()}
        theta = state["theta"]
        background = self.tensor(background)
        k = int(algo.num_topics)
        # near-equal mini-batches: a trailing batch of one or two documents would give
        # batch normalization statistics of nothing
        n_steps = max(1, round(len(X) / int(algo.mini_batch_size)))
        steps, done = 0, 0
        for part_ids in np.array_split(np.arange(len(X)), n_steps):
            part = X.take(part_ids)
            t = t0 + steps
            # one leaf per array: autograd through views of one flat vector materialized a
            # full-size zero gradient per array and added them up (most of a step's time)
            leaves = [piece.detach().requires_grad_(True) for piece in self.pieces(theta)]
            enc, counts = self.sparse(part)
            seed = algo._noise_seed(t, 0, part)
            gen = torch.Generator(device="cpu").manual_seed(seed + 1)
            rec, kl, stats = self.neg_elbo(leaves, background, enc, counts, self.noise(len(part), k, seed),
                                           algo.kl_weight(n0 + done), None if len(part) > 1 else state["bn"],
                                           float(algo.dropout), gen)
            loss = (rec + kl).mean()
            grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, leaves)])
            if algo.weight_decay:
                grad = grad + algo.weight_decay * theta
            if algo.clip_gradient:
                grad = grad.clamp(-algo.clip_gradient, algo.clip_gradient)
            self.step(state, theta, grad, t + 1, algo.optimizer, float(algo.learning_rate))
            if stats is not None:
                state["bn"] = state["bn"] + _BN_RATE * (stats - state["bn"])
            theta = state["theta"]
            steps += 1
            done += len(part)
        return {key: v.detach().cpu().numpy().astype(np.float64) for key, v in state.items()}, steps

    @staticmethod
    def step(state: dict, theta: torch.Tensor, g: torch.Tensor, t: float, optimizer: str, lr: float) -> None:
        """One optimizer step in place of ``state``'s tensors. The accumulators move by
        ``(1 - beta)(g^2 - v)`` (an exponential average) or ``g^2`` (Adagrad): increments that
        stay sound when several workers' are summed (see ntm.py)."""
        if optimizer == "sgd":
            state["theta"] = theta - lr * g
            return
        v = state["v"]  # in place (this step's own copies): a 20k-word network has millions of parameters
        if optimizer == "adagrad":
            v.addcmul_(g, g)
            state["theta"] = theta.addcdiv(g, v.sqrt().add_(_EPS), value=-lr)
            return
        v.mul_(_B2).addcmul_(g, g, value=1 - _B2)
        denom = (v.clamp_min(0) / (1 - _B2 ** t)).sqrt_().add_(_EPS)
        if optimizer == "adam":
            m = state["m"].mul_(_B1).add_(g, alpha=1 - _B1)
            state["theta"] = theta.addcdiv(m, denom, value=-lr / (1 - _B1 ** t))
        else:  # rmsprop
            state["theta"] = theta.addcdiv(g, denom, value=-lr)

def _normalize(x: torch.Tensor, mean, var, stats: list | None) -> torch.Tensor:
    """Batch normalization without scale and shift: by the batch's statistics when ``mean``
    is None (appending the mean and the unbiased variance to ``stats``), else by these."""
    if mean is None:
        n = x.shape[0]
        mean, var = x.mean(0), x.var(0, unbiased=False)
        stats += [mean, var.detach() * (n / (n - 1))]
    return (x - mean) / torch.sqrt(var + BN_EPS)
