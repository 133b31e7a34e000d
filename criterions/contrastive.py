"""The two ONE-PEACE objectives as plain functions.

* Cross-modal aligning contrast: symmetric InfoNCE between the unimodal CLS
  embeddings, negatives gathered from every worker.
* Intra-modal denoising contrast: each masked (student) token must pick the unmasked
  teacher's token at its own position among all teacher tokens of the local batch.
"""
import torch
import torch.nn.functional as F

from ..metrics.gather import gather_with_offsets


def label_smoothed_nll_loss(lprobs: torch.Tensor, target: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Mean over rows of (1 - eps - eps/(C-1)) * nll + eps/(C-1) * sum_c(-log p_c)."""
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    if epsilon == 0.0:
        return nll.mean()
    num_classes = lprobs.size(-1)
    eps_i = epsilon / (num_classes - 1) if num_classes > 1 else 0.0
    smooth = -lprobs.sum(dim=-1)
    return ((1.0 - epsilon - eps_i) * nll + eps_i * smooth).mean()


def cross_modal_contrast(emb_a: torch.Tensor, emb_b: torch.Tensor, logit_scale: torch.Tensor,
                         label_smoothing: float = 0.0, gather: bool = True):
    """Symmetric InfoNCE: returns (loss, a2b_ncorrect, b2a_ncorrect) -- the one InfoNCE of the
    project (pretraining's aligning contrast and retrieval fine-tuning).

    Rows are local embeddings (with gradient); columns are every worker's embeddings,
    detached (``gather=False``: the local batch only).  The target of local row i is column
    offset + i.  Each direction back-propagates into its row modality (and the scale) only.
    """
    if gather:
        all_a, offset = gather_with_offsets(emb_a)
        all_b, _ = gather_with_offsets(emb_b)
    else:
        all_a, all_b, offset = emb_a.detach(), emb_b.detach(), 0
    target = torch.arange(emb_a.size(0), device=emb_a.device) + offset
    sim_a2b = logit_scale * emb_a @ all_b.t()
    sim_b2a = logit_scale * emb_b @ all_a.t()
    loss_a2b = label_smoothed_nll_loss(F.log_softmax(sim_a2b.float(), dim=-1), target, label_smoothing)
    loss_b2a = label_smoothed_nll_loss(F.log_softmax(sim_b2a.float(), dim=-1), target, label_smoothing)
    with torch.no_grad():
        a2b_correct = (sim_a2b.argmax(dim=-1) == target).sum()
        b2a_correct = (sim_b2a.argmax(dim=-1) == target).sum()
    return (loss_a2b + loss_b2a) / 2, a2b_correct, b2a_correct


def denoising_contrast(student: torch.Tensor, teacher: torch.Tensor, mask_indices: torch.Tensor,
                       padding_mask=None, logit_scale: float = 2.5, label_smoothing: float = 0.0):
    """Intra-modal denoising contrast over the local batch.

    student, teacher: (B, L, D) full-length outputs incl. CLS at 0; mask_indices: (B, L)
    True = masked; padding_mask: (B, L - 1) True = pad (positions after CLS) or None.
    """
    dim = student.size(-1)
    student = student[:, 1:].reshape(-1, dim)
    teacher = teacher[:, 1:].reshape(-1, dim).detach()
    masked = mask_indices[:, 1:].reshape(-1)
    if padding_mask is not None:
        keep = ~padding_mask.reshape(-1)
        student, teacher, masked = student[keep], teacher[keep], masked[keep]
    target = masked.nonzero(as_tuple=True)[0]
    if target.numel() == 0:
        return student.sum() * 0.0
    # Normalise in fp32, compare in the training dtype, log-softmax in fp32.
    s = F.normalize(student[masked].float(), dim=-1).to(student.dtype)
    t = F.normalize(teacher.float(), dim=-1).to(teacher.dtype)
    logits = logit_scale * s @ t.t()
    return label_smoothed_nll_loss(F.log_softmax(logits.float(), dim=-1), target, label_smoothing)
