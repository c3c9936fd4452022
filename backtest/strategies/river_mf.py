"""``river-mf``: ``river.reco.BiasedMF`` learned online, one event at a time in time order.

Each event is a target of 1, followed by ``mf_negatives`` uniformly drawn known items with a
target of 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from backtest.settings import BacktestSettings
from backtest.strategies.base import Context, KnownIds
from learner.evaluate import Scorer
from learner.idmap import Vocabulary
from learner.sequences import SequenceBatch


class MatrixScorer:
    """Biased matrix factorisation as a scorer: ``mean + user bias + item bias + user . item``.

    Rows of ``user_*`` follow ``vocab.users`` and rows of ``item_*`` follow ``vocab.items``;
    unknown users score as the zero user. The item factors are its ``item_vectors``.

    >>> vocab = Vocabulary()
    >>> vocab.add_events(["u"], ["a", "b"], ["s"])
    >>> scorer = MatrixScorer(vocab, 0.5, np.zeros(3), np.array([0, 0, 0.0, 1.0]),
    ...                       np.ones((3, 1)), np.array([[0.0], [0.0], [2.0], [0.0]]))
    >>> batch = SequenceBatch(*(torch.zeros(1, 1, dtype=torch.long),) * 3, users=torch.tensor([2]))
    >>> scorer.scores(batch)[0, 2:].tolist()
    [2.5, 1.5]
    """

    def __init__(self, vocab: Vocabulary, mean: float, user_bias: np.ndarray, item_bias: np.ndarray,
                 user_latent: np.ndarray, item_latent: np.ndarray, max_len: int = 50):
        self.vocab = vocab
        self.max_len = max_len
        self.mean = float(mean)
        self.user_bias = torch.as_tensor(user_bias, dtype=torch.float32)
        self.item_bias = torch.as_tensor(item_bias, dtype=torch.float32)
        self.user_latent = torch.as_tensor(user_latent, dtype=torch.float32)
        self.item_latent = torch.as_tensor(item_latent, dtype=torch.float32)

    @property
    def item_vectors(self) -> torch.Tensor:
        return self.item_latent

    def scores(self, inputs: SequenceBatch) -> torch.Tensor:
        users = inputs.users
        return (self.mean + self.user_bias[users, None] + self.item_bias[None, :]
                + self.user_latent[users] @ self.item_latent.T)


class RiverMF(KnownIds):
    """``river.reco.BiasedMF`` (squared loss, SGD) learned online on implicit feedback.

    Every event, in time order, is one ``learn_one(user, item, 1)`` followed by
    ``mf_negatives`` calls ``learn_one(user, other, 0)`` with items drawn uniformly from the
    known ones (seeded).
    """

    name = "river-mf"

    def __init__(self, settings: BacktestSettings, context: Context):
        super().__init__(settings, context)
        from river import optim, reco

        s = settings
        self.model = reco.BiasedMF(
            n_factors=s.mf_factors, bias_optimizer=optim.SGD(s.mf_lr), latent_optimizer=optim.SGD(s.mf_lr),
            l2_bias=s.mf_l2, l2_latent=s.mf_l2, seed=s.seed,
            latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=s.seed))
        self.rng = np.random.default_rng(s.seed)

    def fit_window(self, window: pd.DataFrame, past: list[pd.DataFrame]) -> dict:
        self.add_ids(window)
        items = self.vocab.items.keys()
        negatives = self.rng.integers(0, len(items), size=(len(window), self.settings.mf_negatives))
        learn = self.model.learn_one
        ordered = window.sort_values(["ts", "event_id"], kind="stable")
        for (user, item), others in zip(ordered[["user_id", "item_id"]].itertuples(index=False), negatives):
            learn(user, item, 1.0)
            for other in others:
                if items[other] != item:
                    learn(user, items[other], 0.0)
        return {}

    def scorer(self) -> Scorer:
        m, k = self.model, self.settings.mf_factors

        def table(keys: list[str], biases: dict, latents: dict) -> tuple[np.ndarray, np.ndarray]:
            bias, latent = np.zeros(len(keys) + 2), np.zeros((len(keys) + 2, k))
            for row, key in enumerate(keys, start=2):
                bias[row] = biases.get(key, 0.0)
                if key in latents:
                    latent[row] = latents[key]
            return bias, latent

        user_bias, user_latent = table(self.vocab.users.keys(), m.u_biases, m.u_latents)
        item_bias, item_latent = table(self.vocab.items.keys(), m.i_biases, m.i_latents)
        return MatrixScorer(self.vocab, m.global_mean.get(), user_bias, item_bias, user_latent, item_latent,
                            self.settings.model.max_len)
