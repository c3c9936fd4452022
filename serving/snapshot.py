"""Building what a worker answers from: one model version's snapshot, or the text ranker.

:func:`build_snapshot` makes a :class:`~serving.rankers.Recommender`, in four steps:

1. the version's bundle is extended with every catalog item known now (items newer than the
   version start among their MiniLM look-alikes, as in training);
2. its item vectors are computed once, and the three indexes (model vectors by inner product
   for ``recommend``, by cosine for ``similar``, text vectors by cosine for ``search``) are
   built, or reused from the snapshot it replaces: a snapshot of the same version and items
   extends that one's indexes, and the text index is reused across versions while the text
   encoder is the same;
3. which item rows belong to each storefront, and which have text, are noted;
4. with a bundle of its own (``owned``), what answering never reads is released: the id table,
   the text rows and the id state, which the item vectors already hold.

The worker builds a new snapshot off the event loop and swaps the reference, so a request
always sees exactly one version, encoder included. :func:`build_text_ranker` does the same for
the text ranker that answers while no version serves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from learner.bundle import ModelBundle
from learner.device import Device, pick_device
from learner.idmap import PAD, UNKNOWN, Vocabulary
from learner.text import TEXT_DIM, TextEmbeddingCache, TextEncoder, catalog_texts, embed_texts
from serving.index import ItemIndex
from serving.rankers import Click, Recommender, TextRanker, UserState, state_after

TUNING_USERS, TUNING_EVENTS = 200, 20
"""The recommend index is tuned with 200 users' states; histories of 20 random items stand in for missing users."""


def build_snapshot(version: dict, bundle: ModelBundle, catalog: pd.DataFrame,
                   storefront_items: dict[str, set[str]] | None = None, encoder: TextEncoder | None = None,
                   cache: TextEmbeddingCache | None = None, device: Device | None = None,
                   ann_above: int | None = None, previous: Recommender | None = None, owned: bool = False,
                   precision: str | None = None, ann_recall: float = 0.95,
                   users: Sequence[Sequence] = ()) -> Recommender:
    """One model version ready to answer.

    Parameters
    ----------
    version
        The ``model_versions`` row (without weights) the bundle was loaded from.
    bundle
        The version's bundle; it is copied, never changed (unless ``owned``).
    catalog
        Catalog rows (``storefront, item_id, title, description, category``).
    storefront_items
        Items seen in each storefront's events, besides its catalog.
    ann_above
        Above this many item rows, ``recommend``, ``similar`` and ``search`` search
        inverted-file indexes (:class:`serving.index.ItemIndex`) instead of scoring every
        item (None: never).
    previous
        The snapshot this one replaces: when it served the same version, its indexes are
        reused and only new or changed items are inserted (its text index also when it served
        another version with the same text encoder).
    owned
        The bundle is this snapshot's (freshly loaded): it is extended in place, not copied,
        and its item id table and text rows are released once the item vectors are computed.
    precision
        How item vectors are held for answering: ``"float32"``, ``"float16"`` or ``"int8"``
        (see :class:`serving.index.ItemIndex`); None: float16 in an index, else float32.
        Users' states are computed from the same vectors.
    ann_recall
        The share of the exact top 20 each index should find: it decides how many of an
        index's lists a search scans.
    users
        Histories (as for :meth:`~serving.rankers.Recommender.recommend`) whose states tune the
        recommend index; up to :data:`TUNING_USERS` are read, and histories of
        :data:`TUNING_EVENTS` items drawn at random make up the rest.
    """
    device = device or pick_device()
    bundle = bundle if owned else bundle.copy()
    if len(catalog):
        bundle.extend(catalog=catalog, encoder=encoder, cache=cache)
    model = bundle.model.to(device.torch_device).eval()
    blend = bundle.text_blend
    evidence = blend.evidence(model.item_counts.cpu()).numpy() if blend else None
    with torch.inference_mode(), device.autocast():
        vectors = model.item_vectors().float().cpu().numpy()
    same_items = previous is not None and previous.recommend_index.precision == (
        precision or previous.recommend_index.precision) and \
        previous.item_ids[2:].tolist() == bundle.vocab.items.keys()[:len(previous.item_ids) - 2]
    if same_items and previous.version["id"] == version["id"]:
        recommend_index = previous.recommend_index.extended(vectors)
        similar_index = previous.similar_index.extended(vectors)
    else:
        states = None
        if ann_above is not None and len(vectors) > ann_above:  # an index: tuned with users' states
            users = [*users[:TUNING_USERS], *_random_users(bundle.vocab)[:max(0, TUNING_USERS - len(users))]]
            module = UserState(model).eval()
            states = np.stack([state_after(module, bundle.vocab, h, vectors.__getitem__, device).cpu().numpy()
                               for h in users])
        recommend_index = new_index(vectors, "ip", ann_above, precision, ann_recall, states)
        similar_index = new_index(vectors, "cos", ann_above, precision, ann_recall)
    del vectors
    text_encoder = bundle.text_encoder(encoder)
    texts = _text_rows(bundle, catalog, text_encoder, cache)
    has_text = texts.any(axis=1)
    if same_items and previous.text_encoder_name == bundle.text_encoder_name:  # text rows of the same encoder
        search_index = previous.search_index.extended(texts)
    else:
        search_index = new_index(texts, "cos", ann_above, precision, ann_recall)
    del texts
    if owned:
        _release(model)
    return Recommender(version, device, model, bundle.vocab, text_encoder, bundle.text_encoder_name, blend,
                       evidence, recommend_index, similar_index, search_index,
                       dict(zip(catalog["item_id"].astype(str), catalog["title"])),
                       _storefront_masks(bundle.vocab, catalog, storefront_items or {}), has_text)


def build_text_ranker(catalog: pd.DataFrame, encoder: TextEncoder | None, cache: TextEmbeddingCache | None = None,
                      ann_above: int | None = None, precision: str | None = None, ann_recall: float = 0.95,
                      previous: TextRanker | None = None) -> TextRanker:
    """A :class:`~serving.rankers.TextRanker` over ``catalog``'s pretrained text vectors.

    Parameters
    ----------
    catalog
        Catalog rows (``item_id, title, description, category``); items without text are left out.
    encoder
        The pretrained text encoder (embeds texts missing from ``cache`` and, elsewhere, queries).
    cache
        Text embeddings by key, read first and filled with what is embedded here.
    ann_above, precision, ann_recall
        As for :func:`build_snapshot`.
    previous
        The text ranker this one replaces: when its items are a prefix of this one's (the
        catalog only grew), its index is extended instead of built again.

    Examples
    --------
    >>> from learner.text import text_key
    >>> catalog = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["x", "y", "z"],
    ...                         "description": None, "category": None})
    >>> cache = {text_key(t): v for t, v in zip("xyz", np.eye(3, TEXT_DIM, dtype=np.float32) + [[0], [0], [1]])}
    >>> ranker = build_text_ranker(catalog, None, cache)
    >>> [s.item_id for s in ranker.similar("a", 2)], ranker.search(np.eye(1, TEXT_DIM)[0], 1)[0].item_id
    (['c', 'b'], 'a')
    """
    texts = catalog_texts(catalog)
    item_ids = np.array(["<pad>", "<unknown>", *texts], dtype=object)
    vectors = np.zeros((len(item_ids), TEXT_DIM), dtype=np.float32)
    vectors[2:] = embed_texts(list(texts.values()), encoder, cache)
    if previous is not None and previous.item_ids.tolist() == item_ids[:len(previous.item_ids)].tolist():
        index = previous.index.extended(vectors)
    else:
        index = new_index(vectors, "cos", ann_above, precision, ann_recall)
    return TextRanker(item_ids, dict(zip(catalog["item_id"].astype(str), catalog["title"])), index, encoder)


def new_index(vectors: np.ndarray, metric: str, ann_above: int | None, precision: str | None,
              recall: float, queries: np.ndarray | None = None) -> ItemIndex:
    """An :class:`~serving.index.ItemIndex` of ``vectors``: inverted-file above ``ann_above`` rows, else exact."""
    approximate = ann_above is not None and len(vectors) > ann_above
    return ItemIndex(vectors, metric, approximate, precision, recall, queries=queries)


def _random_users(vocab: Vocabulary) -> list[list[Click]]:
    """:data:`TUNING_USERS` histories of :data:`TUNING_EVENTS` clicks on items drawn at random."""
    rng, keys = np.random.default_rng(0), vocab.items.keys()
    return [[Click(keys[i]) for i in rng.integers(0, len(keys), TUNING_EVENTS)] for _ in range(TUNING_USERS)]


def _text_rows(bundle: ModelBundle, catalog: pd.DataFrame, encoder: TextEncoder,
               cache: TextEmbeddingCache | None) -> np.ndarray:
    """[n_items, 384] text vectors by item row (zero without text): the version's own float16
    rows, or with an id-only model the catalog's texts encoded here."""
    if bundle.model.config.use_text:
        return bundle.model.item_text.cpu().numpy()
    texts = catalog_texts(catalog)
    out = np.zeros((len(bundle.vocab.items), TEXT_DIM), dtype=np.float32)
    out[bundle.vocab.items.index(texts)] = embed_texts(list(texts.values()), encoder, cache)
    return out


def _storefront_masks(vocab: Vocabulary, catalog: pd.DataFrame, seen: dict[str, set[str]]) -> dict[str, np.ndarray]:
    """Per storefront, which item rows belong to it (its catalog or its events)."""
    members: dict[str, set[str]] = {s: set(items) for s, items in seen.items()}
    for storefront, item in zip(catalog["storefront"], catalog["item_id"].astype(str)):
        members.setdefault(storefront, set()).add(item)
    masks = {}
    for storefront, ids in members.items():
        mask = np.zeros(len(vocab.items), dtype=bool)
        mask[vocab.items.index(ids)] = True
        mask[[PAD, UNKNOWN]] = False
        masks[storefront] = mask
    return masks


def _release(model) -> None:
    """Free what answering never reads: the item id table, its state and the text rows (the
    item vectors computed from them are in the indexes)."""
    with torch.no_grad():
        model.item_ids.weight.data = model.item_ids.weight.data.new_zeros(0, model.config.dim)
        for name in ("item_text", "item_id_rows", "item_counts", "item_last_seen"):
            if hasattr(model, name):
                setattr(model, name, getattr(model, name)[:0].clone())

