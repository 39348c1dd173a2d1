"""The paper's settings: what to read of the clip, what the adapter is, how to tune, invert and sample.

Each is a frozen `Settings` class holding its defaults (the paper's, from Tune-A-Video §4 and the official
configs) and its bounds; the modes are enums parsed once. Torch-free, so the CLI reads help texts and
defaults from here without loading a model library. Speed knobs (device, dtype, CUDA graphs, compile,
checkpointing) are not the paper's: they live in `tavcli.engine.runtime.Runtime`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tavcli.errors import SettingError
from tavcli.settings import Mode, Settings, setting

DEFAULT_BASE = "CompVis/stable-diffusion-v1-4"  # the paper's base
DEFAULT_CLIP = "openai/clip-vit-large-patch14"  # the paper's metrics' CLIP
MAX_SIDE = 2048  # pixels: SD v1 was trained at 512; 2048 already needs ~16x its memory per frame
MAX_FRAMES = 256
MAX_STEPS = 1000  # DDIM over SD's 1000-step schedule cannot take more


class Attention(Mode):
    """What attn1's queries of frame i attend: the paper's sparse-causal, or an ablation (§4.3)."""

    SPARSE_CAUSAL = "sparse-causal"  # frames 1 and i-1
    FIRST_FRAME = "first-frame"
    FULL = "full"  # every frame
    FRAME = "frame"  # its own frame: the image model's attention


class Norm(Mode):
    """Whether the resnets' GroupNorms pool statistics over the clip (the paper's 5-D UNet) or per frame."""

    CLIP = "clip"
    FRAME = "frame"


class AdapterKind(Mode):
    FULL = "full"  # the paper's: the tuned tensors, dense
    LORA = "lora"  # a PEFT LoRA on the same modules


class Resize(Mode):
    CROP = "crop"  # keep the aspect ratio, centre-crop
    SQUASH = "squash"  # resize to W x H (the official reader)


@dataclass(frozen=True)
class FrameSampling(Settings):
    """Which frames of the source clip are read: `frames` of them from `start`, every `stride`-th, or spread
    evenly over the rest of the clip when `stride` is None."""

    frames: int = setting(8, "Frames to sample from the clip.", min=1, max=MAX_FRAMES)
    start: int = setting(0, "First frame index.", min=0)
    stride: int | None = setting(None, "Take every K-th frame instead of spreading over the clip.", min=1,
                                 default_text="spread over the clip")


@dataclass(frozen=True)
class FrameSize(Settings):
    """The size the frames are brought to (SD's latents are 1/8 of it) and how."""

    width: int = setting(512, "Frame width in pixels (a multiple of 8).", min=8, max=MAX_SIDE, multiple_of=8)
    height: int = setting(512, "Frame height in pixels (a multiple of 8).", min=8, max=MAX_SIDE, multiple_of=8)
    resize: Resize = setting(Resize.CROP, "crop (keep aspect, centre-crop) or squash.")


@dataclass(frozen=True)
class AdapterSpec(Settings):
    """Everything needed to rebuild the tuned UNet from its base: stored with the adapter, read by every loader."""

    kind: AdapterKind = setting(AdapterKind.FULL, "full (paper-exact) or lora.", option="adapter")
    rank: int = setting(16, "LoRA rank (with --adapter lora).", min=1)
    temporal_seed: int = setting(0, "Seed of tuning's noise, the temporal layers' init and edit noise.",
                                 option="seed")
    attention: Attention = setting(Attention.SPARSE_CAUSAL, "sparse-causal, first-frame, full or frame.")
    norm: Norm = setting(Norm.CLIP, "GroupNorm statistics over the clip (the paper) or per frame.")


@dataclass(frozen=True)
class TuneSettings(Settings):
    """The paper's one-shot tuning: 300 steps of AdamW at 3e-5, constant, gradients clipped at 1."""

    steps: int = setting(300, "Tuning steps.", min=0, max=100_000)
    lr: float = setting(3e-5, "AdamW learning rate.", positive=True)
    betas: tuple[float, float] = setting((0.9, 0.999), "AdamW betas.")
    weight_decay: float = setting(1e-2, "AdamW weight decay.", min=0)
    max_grad_norm: float = setting(1.0, "Gradient clipping norm.", positive=True)
    seed: int = setting(0, "Seed of tuning's noise, the temporal layers' init and edit noise.", option="seed")

    def check(self) -> None:
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise SettingError("betas", f"must be two numbers in [0, 1), got {self.betas}")


@dataclass(frozen=True)
class InversionSettings(Settings):
    """DDIM inversion of the clip with the empty prompt (§3.4)."""

    steps: int = setting(50, "DDIM steps of the stored inversion.", option="inversion_steps", min=1,
                         max=MAX_STEPS)


class Scheduler(Mode):
    """How the edit samples: tav's DDIM (the paper's, and the only one that can start from the DDIM
    inversion), or one of diffusers' schedulers, from noise (the ones the official pipeline accepts)."""

    DDIM = "ddim"
    DPM = "dpm++"  # DPMSolverMultistepScheduler (DPM-Solver++, order 2)
    EULER = "euler"  # EulerDiscreteScheduler
    EULER_A = "euler-a"  # EulerAncestralDiscreteScheduler
    PNDM = "pndm"  # PNDMScheduler (SD v1's own)
    LMS = "lms"  # LMSDiscreteScheduler


@dataclass(frozen=True)
class EditSettings(Settings):
    """Guided DDIM sampling: the paper's 50 steps and guidance 12.5, from the inversion by default.

    `strength` < 1 starts from the clip's partial inversion (SDEdit-style: the first round(S*K) of K
    inversion steps, then the last round(S*K) sampling steps); `eta` > 0 adds DDIM's fresh noise at each
    step, drawn from each video's seed; `seeds` renders one video per seed (as one batch).
    """

    steps: int = setting(50, "DDIM steps.", min=1, max=MAX_STEPS)
    guidance: float = setting(12.5, "Classifier-free guidance scale, any finite number (1: no guidance; 0: "
                                    "unconditional; below 0 steers away from the prompt).")
    negative_prompt: str = setting("", "Negative prompt.", option="negative")
    seed: int = setting(0, "Noise seed (with --no-inversion or --eta).", option="seed")
    inversion: bool = setting(True, "Start from the clip's inversion, not from noise.")
    strength: float = setting(1.0, "How much of the inversion to run and sample back (0 < S <= 1; 1: all of "
                                   "it, lower stays closer to the source clip).")
    eta: float = setting(0.0, "DDIM eta: 0 deterministic, 1 DDPM-like fresh noise at each step (seeded).", min=0)
    seeds: tuple[int, ...] = setting((), "One video per seed, e.g. 1,2,3 (instead of --seed).",
                                     default_text="--seed only")
    scheduler: Scheduler = setting(Scheduler.DDIM, "ddim, or (with --no-inversion) dpm++, euler, euler-a, pndm "
                                                   "or lms, diffusers' schedulers.")

    def check(self) -> None:
        if not 0 < self.strength <= 1:
            raise SettingError("strength", f"must be in (0, 1] (1: the whole inversion), got {self.strength}")
        if self.strength < 1 and not self.inversion:
            raise SettingError("strength", f"{self.strength} partially inverts the clip, which needs the "
                                           "inversion; drop --no-inversion or --strength")
        if self.scheduler != Scheduler.DDIM and self.inversion:
            raise SettingError("scheduler", f"{self.scheduler} samples from noise: the stored inversion is DDIM's, "
                                            "so only ddim can start from it; pass --no-inversion")
        if self.scheduler != Scheduler.DDIM and self.eta:
            raise SettingError("eta", f"is DDIM's, not {self.scheduler}'s; drop --eta or use --scheduler ddim")
        repeated = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if repeated:
            raise SettingError("seeds", f"gives seed {repeated[0]} twice; each seed renders one video")
        if len(self.seeds) > 1 and self.inversion and self.eta == 0:
            raise SettingError("seeds", "would render the same video for each seed: DDIM from the inversion "
                                        "with --eta 0 draws no noise; add --eta (e.g. 0.5) or --no-inversion")

    @property
    def videos_seeds(self) -> tuple[int, ...]:
        """The seed of each video rendered per prompt."""
        return self.seeds or (self.seed,)

    def partial_steps(self) -> int:
        return partial_steps(self.strength, self.steps)


def partial_steps(strength: float, steps: int) -> int:
    """How many of K steps an edit of strength S inverts and samples back: round(S * K), at least one."""
    return max(1, round(strength * steps))
