"""PASER's steps as plain functions (numpy / torch in, numbers out), each one equation of the paper.

    spectral_nmf_clusters   semantic-structural clustering: diffusion (random-walk Laplacian) eigenvectors of a
                            Gaussian affinity, NMF on their affinity |V V^T|, cluster = argmax of NMF weights
    token_jsd               JSD(P || Q) = 1/2 KL(P || M) + 1/2 KL(Q || M), M = (P + Q) / 2, per position
    allocate                B_c proportional to CDS_c, largest-remainder rounding (sums to B exactly)
    efficiency              IES(x) = JSD(x) / log C(x), C(x) = L(x)^2 (the sample's attention cost)
    concepts, ConceptGraph  the concept-consistency graph (CCG)
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch


def spectral_nmf_clusters(emb: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster labels (0..k-1) of the rows of `emb`.

    A = exp(-d^2 / 2 s^2) (d: Euclidean distances, s: their median off the diagonal), L = I - D^-1 A (random
    walk), V = the k eigenvectors of L with the smallest eigenvalues, S = |V V^T|, S ~ W H (NMF, k components),
    label = argmax_j W_ij. L's eigenvectors are D^-1/2 U, U the top eigenvectors of the symmetric
    D^-1/2 A D^-1/2 (same eigenvalues, 1 - lambda), which a symmetric solver computes exactly."""
    from scipy.linalg import eigh
    from sklearn.decomposition import NMF
    from sklearn.metrics import pairwise_distances

    n = len(emb)
    k = min(k, n)
    if k <= 1:
        return np.zeros(n, dtype=int)
    d = pairwise_distances(np.asarray(emb, dtype=np.float64))
    off = d[~np.eye(n, dtype=bool)]
    s = float(np.median(off)) or 1.0
    a = np.exp(-(d**2) / (2 * s**2))
    inv_sqrt = 1.0 / np.sqrt(a.sum(1))
    sym = inv_sqrt[:, None] * a * inv_sqrt[None, :]
    _, u = eigh(sym, subset_by_index=[n - k, n - 1])
    v = inv_sqrt[:, None] * u
    affinity = np.abs(v @ v.T)
    w = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=1000).fit_transform(affinity)
    return w.argmax(1)


def token_jsd(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between the next-token distributions softmax(logits_p) and
    softmax(logits_q), per position (the last dimension is the vocabulary), in fp32."""
    p, q = logits_p.float().softmax(-1), logits_q.float().softmax(-1)
    m = 0.5 * (p + q)

    def kl(a):  # KL(a || M), with 0 log 0 = 0 (M > 0 wherever a > 0); exactly 0 when a == M
        return torch.where(a > 0, a * (a.log() - m.log()), torch.zeros_like(a)).sum(-1)

    return (0.5 * (kl(p) + kl(q))).clamp(min=0.0)


def allocate(cds: list[float], budget: int) -> list[int]:
    """Per-cluster budgets B_c = B * CDS_c / sum CDS, rounded by largest remainder: every cluster gets the floor
    of its quota and the B - sum(floors) samples left go one each to the largest fractional parts (ties: the
    larger CDS, then the lower cluster id). The budgets sum to B exactly, and a cluster that degraded more never
    gets less than one that degraded less. All-zero degradation (identical models): equal quotas."""
    total = sum(cds)
    quota = [budget * c / total if total > 0 else budget / len(cds) for c in cds]
    out = [math.floor(q) for q in quota]
    order = sorted(range(len(cds)), key=lambda c: (-(quota[c] - out[c]), -cds[c], c))
    for c in order[: budget - sum(out)]:
        out[c] += 1
    return out


def efficiency(jsd: float, length: int) -> float:
    """IES(x) = JSD(x) / log C(x) with C(x) = L(x)^2, the quadratic attention cost of a sample of L tokens."""
    return jsd / math.log(max(length, 2) ** 2)


# Words that carry no concept (RAKE's role of nltk's stopword list), plus the chat template's role names.
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing done down during each either else ever every few for from further get
gets got had has have having he her here hers herself him himself his how i if in into is it its itself just
let me more most much must my myself no nor not now of off on once only or other our ours ourselves out over
own same shall she should so some such than that the their theirs them themselves then there these they this
those through to too under until up upon us very was we were what when where which while who whom why will
with would yet you your yours yourself yourselves one two many another
user assistant system
""".split())
WORD = re.compile(r"[a-z][a-z'-]*|[^a-z\s]+")


def concepts(text: str) -> frozenset[str]:
    """The concepts of a text, RAKE's way without nltk: lowercase words, split into phrases at stopwords,
    punctuation and numbers; each maximal run of content words is one concept (e.g. "red apples")."""
    out, run = set(), []
    for tok in WORD.findall(text.lower()):
        if tok[0].isalpha() and tok not in STOPWORDS and len(tok) > 1:
            run.append(tok)
            continue
        if run:
            out.add(" ".join(run))
        run = []
    if run:
        out.add(" ".join(run))
    return frozenset(out)


class ConceptGraph:
    """The CCG: concepts are vertices, an edge joins two concepts that occur together in a selected sample.
    A sample is consistent when every pair of its concepts is either an edge or has a concept not yet in the
    graph: it may bring new concepts, but not relate two known ones that the selection never related."""

    def __init__(self):
        self.adj: dict[str, set[str]] = {}

    def consistent(self, cs: frozenset[str]) -> bool:
        known = [c for c in cs if c in self.adj]
        return all(b in self.adj[a] for i, a in enumerate(known) for b in known[i + 1:])

    def add(self, cs: frozenset[str]) -> None:
        for c in cs:
            self.adj.setdefault(c, set()).update(cs - {c})
