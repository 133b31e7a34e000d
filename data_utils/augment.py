"""Training-time image augmentations of the vision-language tasks (spec §5.3), with kornia.

kornia is pure torch (batched, GPU-capable) and imports beside this torch; torchvision does not.
Each sample is augmented under its own seed (``sample_seed(seed, epoch, index)``), so a resumed run
sees the augmentations an uninterrupted one would.  Input and output: (3, P, P) float in [0, 1],
after the resize and before the CLIP normalisation.

* NLVR2: ColorJitter(0.4, 0.4, 0.4, 0) with p 0.5 -> Gaussian blur (sigma U(0.1, 2)) with p 0.5 ->
  horizontal flip (p 0.5) -> RandAugment(N=2, M=7) over the official ops: Identity, Equalize,
  Brightness, Sharpness, ShearX/Y, TranslateX/Y, Rotate (kornia's magnitude ranges for each; Identity
  is Brightness with factor 1).
* RefCOCO: Gaussian blur (sigma U(0.1, 2)) with p 0.5 (boxes are unaffected).
Differences from the official (torchvision/PIL) ops: kornia's implementations on float tensors and a
fixed 13-tap blur kernel instead of PIL's radius-sized one.
"""
import numpy as np
import torch

NLVR2_POLICY = [[("brightness", 1.0, 1.0)],  # Identity
                [("equalize", 0, 1)], [("brightness", 0.1, 1.9)], [("sharpness", 0.1, 1.9)],
                [("shear_x", -0.3, 0.3)], [("shear_y", -0.3, 0.3)], [("translate_x", -0.1, 0.1)],
                [("translate_y", -0.1, 0.1)], [("rotate", -30.0, 30.0)]]
BLUR_KERNEL = 13  # covers sigma up to 2 (3 sigma each side)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def _blur(p: float):
    import kornia.augmentation as K

    return K.RandomGaussianBlur((BLUR_KERNEL, BLUR_KERNEL), sigma=(0.1, 2.0), p=p)


class Augment:
    """A kornia pipeline applied to one (3, P, P) image under a given seed."""

    def __init__(self, *modules):
        self.modules = torch.nn.Sequential(*modules)

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed)
            out = self.modules(image.unsqueeze(0))[0]
        return out.clamp_(0.0, 1.0)


def nlvr2_train_augment() -> Augment:
    import kornia.augmentation as K
    from kornia.augmentation.auto import RandAugment

    return Augment(K.ColorJitter(0.4, 0.4, 0.4, 0.0, p=0.5), _blur(0.5), K.RandomHorizontalFlip(p=0.5),
                   RandAugment(n=2, m=7, policy=NLVR2_POLICY))


def refcoco_train_augment() -> Augment:
    return Augment(_blur(0.5))
