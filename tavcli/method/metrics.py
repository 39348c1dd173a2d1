"""CLIP metrics for edited videos: text alignment (CLIP score) and frame consistency.

These are the two automatic numbers the Tune-A-Video paper and the LOVEU-TGVE editing benchmark report, computed
with CLIP ViT-L/14 (``openai/clip-vit-large-patch14``):

* CLIP score: 100 x cosine similarity between the prompt's text embedding and each frame's image embedding,
  averaged over frames (the paper reports 26.57 for Tune-A-Video). Not clamped at 0 (torchmetrics' CLIPScore
  clamps); with real CLIP on real frames the cosine is positive anyway.
* Frame consistency: 100 x the mean cosine similarity between the image embeddings of all pairs of distinct
  frames (i < j).

Embeddings are CLIP's projected ones (``get_text_features`` / ``get_image_features``), L2-normalised, in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tavcli.engine.runtime import resolve_device
from tavcli.errors import BadInput
from tavcli.method.base_names import is_hub_id

if TYPE_CHECKING:
    from transformers import CLIPModel

from tavcli.method.params import DEFAULT_CLIP  # noqa: E402,F401 - its home is the params

_IMAGE_BATCH = 16  # frames through the vision tower at once: bounds activation memory for long videos
_LOAD_ERRORS = (OSError, ValueError, KeyError)  # hub errors (offline, 404, bad id) are OSError subclasses



def _first_line(error: BaseException) -> str:
    """Transformers' messages span several lines; ours stay on one."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _locate(name_or_path: str) -> str:
    """A folder as a string, or a hub id; a path that does not exist is an error here, not a hub request."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise BadInput(f"{path} is a file; pass --clip PATH to a folder holding a transformers CLIP model")
    if not is_hub_id(name_or_path):
        raise BadInput(f"no CLIP model folder at {name_or_path!r} and it is not a hub id like {DEFAULT_CLIP}; "
                           "pass --clip PATH to a folder holding a transformers CLIP model")
    return name_or_path


def _image_processor_class() -> Any:
    """The PIL backend of CLIP's image processor where it exists (transformers 5).

    transformers 5's default ``CLIPImageProcessor`` is torchvision-based and, without torchvision, falls back to
    the PIL one after printing a warning. Asking for the PIL class directly avoids the warning and the torchvision
    dependency, and PIL bicubic resizing is what OpenAI's CLIP preprocessing does. transformers 4's
    ``CLIPImageProcessor`` is already the PIL/numpy one.
    """
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def _pooled(output: Any) -> torch.Tensor:
    """get_*_features return a tensor in transformers 4 and a BaseModelOutputWithPooling in 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        what = f"{frames.dtype} array of shape {frames.shape}" if isinstance(frames, np.ndarray) else type(frames)
        raise BadInput(f"frames must be a uint8 array (F, H, W, 3), got a {what}; decode the video to RGB uint8")
    if len(frames) == 0:
        raise BadInput("no frames to score; check that the video decoded to at least one frame")


def _check_prompt(prompt: str) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadInput("empty prompt; pass the text the video was edited towards")


def _clip_score(images: torch.Tensor, text: torch.Tensor) -> float:
    """100 x mean over frames of cos(frame, prompt); both inputs already normalised."""
    return 100.0 * (images.double() @ text.double()).mean().item()


def _check_pairs(count: int) -> None:
    """A single frame has no pair, so consistency is undefined; an error beats a NaN in a results table."""
    if count < 2:
        raise BadInput("frame consistency needs at least 2 frames; score a video with more than one frame")


def _frame_consistency(images: torch.Tensor) -> float:
    """100 x mean cos over pairs i < j; the diagonal (always 1) is left out so it cannot inflate the score."""
    f = images.shape[0]
    _check_pairs(f)
    sims = images.double() @ images.double().T
    i, j = torch.triu_indices(f, f, offset=1)
    return 100.0 * sims[i, j].mean().item()


@dataclass
class Scorer:
    """A CLIP model with its tokenizer and image processor, on one device, in eval mode and fp32."""

    model: CLIPModel
    tokenizer: Any  # CLIPTokenizer (tokenizers-backed in transformers 5)
    image_processor: Any  # CLIPImageProcessorPil, or CLIPImageProcessor on transformers 4
    device: torch.device

    @classmethod
    def load(cls, name_or_path: str = DEFAULT_CLIP, device: str | torch.device = "cpu") -> Scorer:
        """Load a CLIP model from a folder or the HF cache/hub (HF_HUB_OFFLINE is honoured by transformers)."""
        from transformers import CLIPModel, CLIPTokenizer

        dev = device if isinstance(device, torch.device) else resolve_device(device)  # before loading, so a bad --device fails fast
        source = _locate(name_or_path)

        def parts(local_files_only: bool) -> tuple:
            # fp32 whatever the checkpoint holds: the metrics are small differences of cosines.
            return (CLIPModel.from_pretrained(source, dtype=torch.float32, local_files_only=local_files_only),
                    CLIPTokenizer.from_pretrained(source, local_files_only=local_files_only),
                    _image_processor_class().from_pretrained(source, local_files_only=local_files_only))

        try:
            try:  # the HF cache first: with the network down, the hub's client retries for ~50 s before it
                model, tokenizer, image_processor = parts(local_files_only=True)  # falls back to the cache
            except _LOAD_ERRORS:
                model, tokenizer, image_processor = parts(local_files_only=False)
        except _LOAD_ERRORS as e:
            raise BadInput(_load_hint(name_or_path, source, e)) from e
        model.requires_grad_(False).eval().to(dev)
        return cls(model, tokenizer, image_processor, dev)

    @torch.no_grad()
    def image_embeddings(self, frames: np.ndarray) -> torch.Tensor:
        """Normalised fp32 CLIP image embeddings (F, D), on the CPU, of uint8 frames (F, H, W, 3)."""
        _check_frames(frames)
        chunks = []
        for start in range(0, len(frames), _IMAGE_BATCH):
            batch = list(frames[start:start + _IMAGE_BATCH])
            # channels_last is stated, not inferred: a tiny frame (e.g. 3x3) would be ambiguous.
            pixels = self.image_processor(images=batch, return_tensors="pt", input_data_format="channels_last")
            features = self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device))
            chunks.append(_pooled(features).float())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1).cpu()

    @torch.no_grad()
    def text_embedding(self, prompt: str) -> torch.Tensor:
        """Normalised fp32 CLIP text embedding (D,), on the CPU, of one prompt cut to the 77-token context."""
        _check_prompt(prompt)
        # CLIP's causal text tower pools at the EOS token, so padding after it changes nothing; pad to the
        # context length like OpenAI's clip.tokenize. Some tokenizer configs leave model_max_length unset (huge).
        length = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
        ids = self.tokenizer(prompt, padding="max_length", max_length=length, truncation=True,
                             return_tensors="pt").input_ids
        features = self.model.get_text_features(input_ids=ids.to(self.device))
        return torch.nn.functional.normalize(_pooled(features).float()[0], dim=-1).cpu()

    def clip_score(self, frames: np.ndarray, prompt: str) -> float:
        """100 x the prompt/frame cosine similarity, averaged over frames."""
        _check_prompt(prompt)  # before the (slow) image pass
        return _clip_score(self.image_embeddings(frames), self.text_embedding(prompt))

    def frame_consistency(self, frames: np.ndarray) -> float:
        """100 x the mean cosine similarity over all pairs of distinct frames."""
        _check_frames(frames)
        _check_pairs(len(frames))  # before the (slow) image pass
        return _frame_consistency(self.image_embeddings(frames))

    def score(self, frames: np.ndarray, prompt: str) -> dict[str, float]:
        """Both metrics, from a single pass of the frames through the vision tower."""
        _check_prompt(prompt)
        _check_frames(frames)
        _check_pairs(len(frames))
        images = self.image_embeddings(frames)
        return {
            "clip_score": _clip_score(images, self.text_embedding(prompt)),
            "frame_consistency": _frame_consistency(images),
        }


def _load_hint(name: str, source: str, error: BaseException) -> str:
    """One line: what failed and how to fix it, different for a local folder and a hub id."""
    why = _first_line(error)
    if Path(source).expanduser().is_dir():
        return (f"could not load a CLIP model from {source} ({why}); the folder needs config.json, the weights, "
                "the tokenizer and preprocessor_config.json, as CLIPModel/CLIPProcessor.save_pretrained write them")
    return (f"could not load CLIP model {name!r} ({why}); if it is not in the Hugging Face cache, run "
            f"`hf download {name}` on a connected machine (offline runs need HF_HUB_OFFLINE=1 and the cache), "
            "or pass --clip PATH to a local CLIP folder")


def psnr(frames: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of uint8 frames against a reference of the same shape (inf if equal):
    how close a reconstruction of the clip through its inversion comes to the clip."""
    if frames.shape != reference.shape:
        raise ValueError(f"frames {frames.shape} and reference {reference.shape} differ in shape")
    mse = float(np.mean((frames.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(255.0 ** 2 / mse))
