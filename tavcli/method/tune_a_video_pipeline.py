"""Tune-A-Video as a diffusers pipeline: a tuned clip's model, loaded and run without tav.

`tav export --format diffusers` copies this file, `attention.py` and `ddim.py` verbatim into the folder it
writes (the UNet's own code goes into `unet/`), and model_index.json names this pipeline, so

    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    video = pipe("a panda is skiing", num_inference_steps=50, guidance_scale=12.5, output_type="np").frames[0]

gives the frames (F, H, W, 3) in [0, 1]. By default sampling starts from the clip's DDIM inversion, stored in
the folder, so the result is what `tav edit` renders with the same settings (tests/test_interop.py checks it,
exactly on CPU in fp32). `latents=` (diffusers' (B, C, F, h, w) layout), `generator=`, or another
`video_length=`/`height=`/`width=` start from noise instead, as in diffusers' video pipelines.

A `--light` folder holds no base weights: model_index.json names the base (`base`, `base_revision`), and the
components it lacks are loaded from there when the pipeline is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from .attention import video_forward  # noqa: F401 - diffusers copies only a file's own relative imports: ddim's
from .ddim import ddim_schedule, sample

DECODE_CHUNK = 2  # frames through the VAE decoder at once, as tav decodes (the same numbers, less memory)


@dataclass
class TuneAVideoPipelineOutput(BaseOutput):
    """`frames`: (P, F, H, W, 3) in [0, 1] for "np", (P, F, 3, H, W) for "pt", P lists of PIL images for
    "pil", or the latents (P, C, F, h, w) for "latent"; one video per prompt."""

    frames: np.ndarray | torch.Tensor | list


class TuneAVideoPipeline(DiffusionPipeline):
    """Text-to-video from a Stable Diffusion v1.x base tuned on one clip (Tune-A-Video, Wu et al. 2023)."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae", "text_encoder", "tokenizer", "scheduler"]  # a --light folder's come from `base`

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL | None = None,
                 text_encoder: CLIPTextModel | None = None, tokenizer: CLIPTokenizer | None = None,
                 scheduler: DDIMScheduler | None = None, base: str | None = None, base_revision: str | None = None,
                 video_length: int = 8, height: int = 512, width: int = 512,
                 inversion: str | None = "inversion.safetensors"):
        super().__init__()
        if base is not None:  # a --light folder: what it does not carry comes from its base, in the UNet's dtype
            where = {"revision": base_revision}
            vae = vae or AutoencoderKL.from_pretrained(base, subfolder="vae", torch_dtype=unet.dtype, **where)
            text_encoder = text_encoder or CLIPTextModel.from_pretrained(base, subfolder="text_encoder",
                                                                         torch_dtype=unet.dtype, **where)
            tokenizer = tokenizer or CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **where)
            scheduler = scheduler or DDIMScheduler.from_pretrained(base, subfolder="scheduler", **where)
            for model in (vae, text_encoder):
                model.to(unet.device).requires_grad_(False)
        self.register_modules(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
        self.register_to_config(base=base, base_revision=base_revision, video_length=video_length, height=height,
                                width=width, inversion=inversion)
        self._inversion: torch.Tensor | None = None

    def stored_inversion(self) -> torch.Tensor | None:
        """The clip's DDIM inversion (1, F, C, h, w) kept in the folder, read once; None if it has none."""
        name = self.config.inversion
        if self._inversion is None and name:
            where = self.name_or_path or ""
            if os.path.isdir(where):
                path = os.path.join(where, name)
            else:  # loaded from a hub repo: the file comes through the Hugging Face cache
                from huggingface_hub import hf_hub_download

                path = hf_hub_download(where, name)
            self._inversion = load_file(path)["latents"]
        return self._inversion

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """CLIP text embeddings (N, 77, D), in fp32, as tav's `encode_prompts`."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self._execution_device)
        return self.text_encoder(ids)[0].float()

    def prepare_latents(self, video_length: int | None, height: int | None, width: int | None,
                        generator: torch.Generator | None, latents: torch.Tensor | None) -> torch.Tensor:
        """Where sampling starts, in tav's (B, F, C, h, w) layout: `latents`, else the stored inversion when
        nothing asks for another start, else Gaussian noise drawn from `generator` (on its device)."""
        if latents is not None:
            return latents.permute(0, 2, 1, 3, 4).float()  # diffusers' video layout is (B, C, F, h, w)
        inversion = self.stored_inversion()
        f, h, w = video_length or self.config.video_length, height or self.config.height, width or self.config.width
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        shape = (1, f, self.unet.config.in_channels, h // scale, w // scale)
        if generator is None and inversion is not None and tuple(inversion.shape) == shape:
            return inversion.float()
        return torch.randn(shape, generator=generator, device=generator.device if generator else "cpu")

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Video latents (B, F, C, h, w) -> frames (B, F, 3, H, W) in [-1, 1], a few frames at a time."""
        b, f = latents.shape[:2]
        images = [self.vae.decode(z.to(self.vae.dtype) / self.vae.config.scaling_factor).sample.float()
                  for z in latents.flatten(0, 1).split(DECODE_CHUNK)]
        return torch.cat(images).clamp(-1, 1).unflatten(0, (b, f))

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], video_length: int | None = None, height: int | None = None,
                 width: int | None = None, num_inference_steps: int = 50, guidance_scale: float = 12.5,
                 negative_prompt: str | None = None, generator: torch.Generator | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "np", return_dict: bool = True):
        """One video per prompt by guided DDIM sampling (eta 0), from the clip's inversion by default."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        device = self._execution_device
        start = self.prepare_latents(video_length, height, width, generator, latents).to(device)
        schedule = ddim_schedule(dict(self.scheduler.config), num_inference_steps)
        uncond = self.encode_prompt([negative_prompt or ""])
        videos = []
        with self.progress_bar(total=num_inference_steps * len(prompts)) as bar:
            for i, text in enumerate(self.encode_prompt(prompts).split(1)):
                noise = start[i:i + 1] if start.shape[0] > 1 else start
                videos.append(sample(self.unet, noise, text, uncond, schedule, guidance_scale, lambda _: bar.update()))
        latents = torch.cat(videos)
        if output_type == "latent":
            frames = latents.permute(0, 2, 1, 3, 4)
        else:
            video = (self.decode_latents(latents) + 1) / 2  # [0, 1]
            frames = self._as_output(video, output_type)
        self.maybe_free_model_hooks()
        return TuneAVideoPipelineOutput(frames=frames) if return_dict else (frames,)

    @staticmethod
    def _as_output(video: torch.Tensor, output_type: str) -> np.ndarray | torch.Tensor | list:
        if output_type == "pt":
            return video
        if output_type not in ("np", "pil"):
            raise ValueError(f"output_type must be 'np', 'pt', 'pil' or 'latent', not {output_type!r}")
        frames = video.permute(0, 1, 3, 4, 2).cpu().numpy()
        if output_type == "np":
            return frames
        from PIL import Image

        return [[Image.fromarray((f * 255).round().astype(np.uint8)) for f in clip] for clip in frames]

    def save_pretrained(self, *args, **kwargs) -> None:
        raise NotImplementedError("this pipeline's folder is written by `tav export --format diffusers` (the "
                                  "adapter apart from the base weights); save_pretrained would not keep that")
