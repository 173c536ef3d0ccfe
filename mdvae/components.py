"""The parts of a bundle: their names, the classes stored under them, and the one comparison
that the app and the evaluation run between the models.

The model files do not know their file format: the classes a bundle may hold are registered
here, and `mdvae.bundle` imports this module before it saves or loads one. Component names
are the constants below; the comparison is `COMPARED` (VQ-VAEs alone, MDVAE, V-DSAE,
A-DSAE), whose `reconstruct` turns stage-2 features into each model's reconstruction, and
`EMOTION_READERS`, the models whose w an emotion head reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mdvae.bundle import register_component
from mdvae.model.dsae import DSAE
from mdvae.model.emotion import EmotionHead, ReferenceEmotionHead
from mdvae.model.mdvae import MDVAE
from mdvae.stage1.vqvae import VQVAE

for _cls in (VQVAE, MDVAE, DSAE, EmotionHead, ReferenceEmotionHead):
    register_component(_cls)

# Component names in a bundle
VQ_VISUAL = "vq_visual"
VQ_AUDIO = "vq_audio"
MDVAE_MODEL = "mdvae"
DSAE_AUDIO = "dsae_audio"
DSAE_VISUAL = "dsae_visual"
EMOTION_HEAD = "emotion"  # reads the MDVAE's w
EMOTION_DSAE_AUDIO = "emotion_dsae_audio"
EMOTION_DSAE_VISUAL = "emotion_dsae_visual"
# read each model's w against the same person's neutral clip (`ReferenceEmotionHead`); the
# app uses the MDVAE's, the evaluation compares it with the one-stream models'
EMOTION_REFERENCE = "emotion_reference"
EMOTION_REFERENCE_DSAE_AUDIO = "emotion_reference_dsae_audio"
EMOTION_REFERENCE_DSAE_VISUAL = "emotion_reference_dsae_visual"


@dataclass(frozen=True)
class Compared:
    """One model of the comparison: how it rebuilds stage-2 features."""

    name: str  # its key in results: a component name, or "vqvae" for the VQ-VAEs alone
    title: str  # in tables, figures and the app
    component: str | None  # the bundle component it runs; None: the VQ-VAEs alone
    streams: tuple[str, ...]  # the streams it models: ("audio", "visual"), or one of them


VQVAE_ALONE = "vqvae"
# In the order of the reconstruction table.
COMPARED: dict[str, Compared] = {
    c.name: c
    for c in (
        Compared(VQVAE_ALONE, "VQ-VAE", None, ("audio", "visual")),
        Compared(MDVAE_MODEL, "MDVAE", MDVAE_MODEL, ("audio", "visual")),
        Compared(DSAE_VISUAL, "V-DSAE", DSAE_VISUAL, ("visual",)),
        Compared(DSAE_AUDIO, "A-DSAE", DSAE_AUDIO, ("audio",)),
    )
}
# The models that rebuild the face, in the order of the denoising comparison.
DENOISERS: tuple[str, ...] = (VQVAE_ALONE, DSAE_VISUAL, MDVAE_MODEL)


def available(names, components: Mapping[str, nn.Module]) -> list[str]:
    """The models among `names` whose component `components` (a Bundle, a dict) holds."""
    return [
        n for n in names if COMPARED[n].component is None or COMPARED[n].component in components
    ]


@torch.no_grad()
def reconstruct(
    name: str, components: Mapping[str, nn.Module], x_a: Tensor, x_v: Tensor
) -> tuple[Tensor | None, Tensor | None]:
    """Stage-2 features x_a (B, T, 512), x_v (B, T, 2048) as model `name` rebuilds them with
    posterior means: (x_a_hat, x_v_hat), None for a stream the model does not see. The
    VQ-VAEs alone return the features as they are (decoding them is the stage-1 baseline)."""
    compared = COMPARED[name]
    if compared.component is None:
        return x_a, x_v
    model = components[compared.component]
    if compared.streams == ("audio", "visual"):
        return model.decode(model.encode(x_a, x_v))
    if compared.streams == ("audio",):
        return model.decode(model.encode(x_a)), None
    return None, model.decode(model.encode(x_v))


@dataclass(frozen=True)
class EmotionReader:
    """A static latent and the emotion heads that read it."""

    name: str  # the pipeline's name for it
    model: str  # the component whose posterior mean of w is read
    head: str  # the emotion head component
    title: str  # in the app
    reference_head: str  # the head that reads w against the same person's neutral clip


# Not a model: the emotion study's reference, the A-DSAE's and V-DSAE's w read together by one
# logistic regression (`train.evaluate.late_fusion`), what the voice can add to the face
LATE_FUSION = "late_fusion"
EMOTION_READERS: dict[str, EmotionReader] = {
    r.name: r
    for r in (
        EmotionReader("mdvae", MDVAE_MODEL, EMOTION_HEAD, "MDVAE", EMOTION_REFERENCE),
        EmotionReader("audio", DSAE_AUDIO, EMOTION_DSAE_AUDIO, "A-DSAE (voice)",
                      EMOTION_REFERENCE_DSAE_AUDIO),
        EmotionReader("visual", DSAE_VISUAL, EMOTION_DSAE_VISUAL, "V-DSAE (face)",
                      EMOTION_REFERENCE_DSAE_VISUAL),
    )
}
