"""Multiple-choice scores: rows come grouped by question, ``num_choices`` candidates at a time."""
import torch


def choice_scores(logits: torch.Tensor, num_choices: int) -> torch.Tensor:
    """(B * num_choices, 1) logits -> (B, num_choices) scores."""
    if logits.dim() == 2 and logits.size(-1) != 1:
        raise ValueError(f"multiple-choice scoring expects one logit per candidate (num_classes=1), got {tuple(logits.shape)}")
    if logits.numel() % num_choices:
        raise ValueError(f"{logits.numel()} candidate scores are not a multiple of num_choices={num_choices}")
    return logits.reshape(-1, num_choices)
