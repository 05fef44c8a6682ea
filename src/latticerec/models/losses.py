"""Loss functions as plain functions (scores in, scalar out)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking loss, mean over the batch.

    ``L_BPR = -mean ln σ(ŷ_ui - ŷ_uj)`` (LATTICE eq. 12; MICRO eq. 18), computed with
    ``logsigmoid`` for numerical stability.
    """
    return -F.logsigmoid(pos_scores - neg_scores).mean()


def _twins(pos: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, cols)`` of the candidates ``ids[col]`` equal to ``pos[row]`` at another position
    (``col != row``): the same item drawn twice in a batch. Found by sorting (``O(B log B)``), not
    by a ``B x 2B`` comparison."""
    order = ids.argsort()
    ordered = ids[order]
    lo = torch.searchsorted(ordered, pos)
    count = torch.searchsorted(ordered, pos, right=True) - lo  # >= 1: ids[b] == pos[b] itself
    rows = torch.nonzero(count > 1).squeeze(1)
    if rows.numel() == 0:
        return rows, rows
    reps = count[rows]
    row = rows.repeat_interleave(reps)
    start = torch.cumsum(reps, 0) - reps
    offset = torch.arange(row.numel(), device=pos.device) - start.repeat_interleave(reps)
    col = order[lo[rows].repeat_interleave(reps) + offset]
    keep = col != row
    return row[keep], col[keep]


class _SampledSoftmax(torch.autograd.Function):
    """Per-row ``logsumexp(logits) - logit_positive`` of :func:`sampled_softmax_loss`, with a
    hand-written backward (``softmax - onehot``): one ``B x 2B`` product and one exponential pass
    forward, two products backward, instead of autograd's chain of ``B x 2B`` temporaries."""

    @staticmethod
    def forward(ctx, u, cand, twin_rows, twin_cols, tau):
        e = torch.mm(u, cand.T).mul_(1.0 / tau)
        rows = torch.arange(u.shape[0], device=u.device)
        positive = e[rows, rows].clone()
        shift = e.amax(1, keepdim=True)
        e.sub_(shift).exp_()
        e[twin_rows, twin_cols] = 0.0
        denom = e.sum(1)
        ctx.tau = tau
        ctx.save_for_backward(u, cand, e, denom)
        return shift.squeeze(1) + denom.log() - positive

    @staticmethod
    def backward(ctx, grad):
        u, cand, e, denom = ctx.saved_tensors
        scale = grad / ctx.tau  # ∂/∂(u·c) = (softmax - onehot) / τ, in one pass over the scores
        g = e * (scale / denom).unsqueeze(1)  # not in place: a retained graph may run backward again
        rows = torch.arange(u.shape[0], device=u.device)
        g[rows, rows] -= scale
        return g @ cand, g.T @ u, None, None, None


def sampled_softmax_loss(u: torch.Tensor, pos_rows: torch.Tensor, neg_rows: torch.Tensor,
                         pos: torch.Tensor, neg: torch.Tensor, tau: float) -> torch.Tensor:
    """In-batch sampled softmax loss, mean over the batch (an alternative to BPR, ``rank_loss=softmax``).

    ``L = -mean_b log( exp(u_b·p_b/τ) / Σ_{j ∈ C} exp(u_b·i_j/τ) )`` over the candidates ``C``: the
    batch's positive items and its sampled negatives (``2B`` items; every row's positive is a negative
    of the other rows, as in sampled-softmax training of two-tower and graph recommenders, e.g. Wu et
    al., "On the Effectiveness of Sampled Softmax Loss for Item Recommendation", TOIS 2024). A
    candidate that is the row's own positive item at another position (the same item drawn twice in
    the batch) is left out, so an item is never its own negative. ``u``: ``B x d`` user rows,
    ``pos_rows``/``neg_rows``: ``B x d`` item rows, ``pos``/``neg``: their item ids. Scores are the
    model's dot products, so ranking at evaluation is unchanged."""
    twin_rows, twin_cols = _twins(pos, torch.cat([pos, neg]))
    cand = torch.cat([pos_rows, neg_rows])
    return _SampledSoftmax.apply(u, cand, twin_rows, twin_cols, float(tau)).mean()


def l2_regularizer(*embeddings: torch.Tensor) -> torch.Tensor:
    """``½ Σ ||e||² / batch``: the L2 penalty on the embeddings of a batch (LATTICE/NGCF code).

    The batch size is the number of rows of the first tensor.
    """
    batch = embeddings[0].shape[0]
    return sum(e.pow(2).sum() for e in embeddings) / (2.0 * batch)


class _InfoNCERows(torch.autograd.Function):
    """Per-anchor ``-log`` of eq. 10 for the anchors ``rows`` of the unit-norm ``z_m`` against
    ``z_c`` (positives and negatives) and ``z_m`` (negatives, the anchor itself excluded).

    A hand-written backward: with ``P`` the softmax of the ``2N`` logits of a row, the gradient of
    the logits is ``P - onehot(positive)``, so the pass needs two ``B x N`` exponentials and four
    products instead of autograd's chain of ``B x N`` temporaries (``div``, ``logsumexp``, ``exp``,
    ``scatter``, …). With ``keep=False`` the exponentials are recomputed in the backward pass
    instead of being stored (memory of one chunk at a time)."""

    @staticmethod
    def _exponentials(anchor, z_m, z_c, rows, tau):
        """``exp(logit - shift)`` of both similarity blocks and ``log Σ exp(logits)`` per anchor.
        Cosines are at most 1, so ``shift = 1/τ`` bounds every logit and is folded into the
        products (no row max pass); a very small ``τ`` takes the exact row max instead."""
        if tau >= 0.05:  # exp(-2/τ) >= e^-40: no underflow of the smallest term in float32
            shift = anchor.new_full((1, 1), 1.0 / tau)
            e_c = torch.addmm(shift, anchor, z_c.T, alpha=1.0, beta=-1.0)
            e_m = torch.addmm(shift, anchor, z_m.T, alpha=1.0, beta=-1.0)
        else:
            e_c, e_m = anchor @ z_c.T, anchor @ z_m.T
            shift = torch.maximum(e_c.amax(1), e_m.amax(1)).unsqueeze(1)
            e_c.sub_(shift)
            e_m.sub_(shift)
        e_c.exp_()
        e_m.exp_().scatter_(1, rows.unsqueeze(1), 0.0)  # j = i is no negative
        denom = e_c.sum(1) + e_m.sum(1)
        return e_c, e_m, denom, shift.squeeze(1) + denom.log()

    @staticmethod
    def forward(ctx, z_m, z_c, rows, tau, keep):
        anchor = z_m[rows] / tau  # logits are θ/τ: the anchor carries the 1/τ
        e_c, e_m, denom, lse = _InfoNCERows._exponentials(anchor, z_m, z_c, rows, tau)
        positive = (anchor * z_c[rows]).sum(1)
        ctx.tau = tau
        ctx.save_for_backward(z_m, z_c, rows, denom, *((e_c, e_m) if keep else ()))
        return lse - positive

    @staticmethod
    def backward(ctx, grad):
        z_m, z_c, rows, denom, *kept = ctx.saved_tensors
        tau = ctx.tau
        anchor = z_m[rows] / tau
        e_c, e_m = kept if kept else _InfoNCERows._exponentials(anchor, z_m, z_c, rows, tau)[:2]
        scale = (grad / denom).unsqueeze(1)
        g_c = e_c * scale  # ∂/∂ logits_c: softmax minus 1 at the positive
        g_c.index_put_((torch.arange(len(rows), device=rows.device), rows), -grad, accumulate=True)
        g_m = e_m * scale  # ∂/∂ logits_m: softmax
        g_anchor = (g_c @ z_c + g_m @ z_m) / tau
        g_zc = g_c.T @ anchor
        # index_put_ with accumulate: repeated anchors add up (and it is ~10x index_add_ on CPU)
        g_zm = (g_m.T @ anchor).index_put_((rows,), g_anchor, accumulate=True)
        return g_zm, g_zc, None, None, None


def info_nce(modal: torch.Tensor, fused: torch.Tensor, tau: float = 0.5,
             anchors: torch.Tensor | None = None, chunk_size: int = 2048) -> torch.Tensor:
    """InfoNCE between one modality's item embeddings and the fused ones (MICRO eq. 9-10, one ``m``).

    For every anchor item ``i`` (``anchors``: row indices; all rows by default), with the cosine
    critic ``θ`` and temperature ``τ``::

        -log  e^{θ(h_i^m, h_c,i)/τ} / ( e^{θ(h_i^m, h_c,i)/τ}
                                        + Σ_{j≠i} ( e^{θ(h_i^m, h_c,j)/τ} + e^{θ(h_i^m, h_j^m)/τ} ) )

    averaged over the anchors, where ``j`` runs over every row of ``modal`` / ``fused`` (pass the
    rows of a sampled batch to use that batch as the negative set). Eq. 9 writes ``-I`` with ``I``
    the ratio; as in every InfoNCE estimator (and the released code) the ratio enters through its
    logarithm. Computed in chunks of ``chunk_size`` anchors, so no ``anchors x N`` matrix larger
    than ``chunk_size x N`` exists at once; with several chunks the backward pass recomputes each
    chunk's similarities instead of keeping them, so training memory is bounded too.
    """
    if modal.shape != fused.shape:
        raise ValueError(f"modal {tuple(modal.shape)} and fused {tuple(fused.shape)} differ in shape")
    z_m, z_c = F.normalize(modal, dim=1), F.normalize(fused, dim=1)
    rows = torch.arange(modal.shape[0], device=modal.device) if anchors is None else anchors
    if rows.numel() == 0:
        raise ValueError("info_nce needs at least one anchor")
    chunks = rows.split(chunk_size)
    total = modal.new_zeros(())
    for part in chunks:
        total = total + _InfoNCERows.apply(z_m, z_c, part, tau, len(chunks) == 1).sum()
    return total / rows.numel()


def orthogonality_loss(specific: torch.Tensor) -> torch.Tensor:
    """Soft orthogonality of the modality-specific parts (MICRO eq. 13), for any number of modalities.

    ``specific`` is ``(M, N, d)``: ``h_s,i^m`` for each modality ``m`` and item ``i``. Eq. 13 is
    ``(1/|I|) Σ_i (h_s,i^v ᵀ h_s,i^t)²`` for two modalities; here the sum runs over every unordered
    modality pair ``m < m'`` (zero for a single modality).
    """
    n_modal, n_items = specific.shape[0], specific.shape[1]
    total = specific.new_zeros(())
    for a in range(n_modal):
        for b in range(a + 1, n_modal):
            total = total + (specific[a] * specific[b]).sum(-1).pow(2).sum()
    return total / n_items


def cross_view_info_nce(view_a: torch.Tensor, view_b: torch.Tensor, anchors: torch.Tensor,
                        tau: float = 0.2) -> torch.Tensor:
    """InfoNCE between two views of the same nodes (SGL, Wu et al. SIGIR 2021, eq. 10)::

        L_ssl = mean_{u ∈ anchors} -log  e^{s(z'_u, z''_u)/τ} / Σ_{v ∈ V} e^{s(z'_u, z''_v)/τ}

    with ``z'`` the rows of ``view_a``, ``z''`` the rows of ``view_b``, ``s`` the cosine similarity
    and ``v`` every row of ``view_b`` (the positive included, as in eq. 10). Eq. 10 sums over the
    anchors; the mean keeps the weight λ of eq. 11 on the scale of the batch-mean BPR loss.
    Memory is ``len(anchors) x N``.
    """
    if view_a.shape != view_b.shape:
        raise ValueError(f"views differ in shape: {tuple(view_a.shape)} vs {tuple(view_b.shape)}")
    if anchors.numel() == 0:
        raise ValueError("cross_view_info_nce needs at least one anchor")
    z_a = F.normalize(view_a[anchors], dim=1)
    z_b = F.normalize(view_b, dim=1)
    logits = z_a @ z_b.T / tau
    positive = logits.gather(1, anchors.unsqueeze(1)).squeeze(1)
    return (torch.logsumexp(logits, dim=1) - positive).mean()


def bootstrap_cosine_loss(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BM3's critic ``C(h̃, sg(ḣ)) = 1 - cos(h̃, ḣ)``, mean over rows (Zhou et al. WWW 2023, eq. 6-8
    use ``C`` for the reconstruction, alignment and masking losses). The target is detached here:
    the stop-gradient ``sg(·)`` is part of the loss, so no caller can forget it."""
    return (1.0 - F.cosine_similarity(online, target.detach(), dim=-1)).mean()
