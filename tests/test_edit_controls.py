"""Control over the edit (issue #10, part 4), in the method, on the tiny random base: strength (partial
inversion), DDIM eta and seeds, diffusers' schedulers, the adapter scale; and their bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tavcli.app.jobs import EditJob
from tavcli.engine.runtime import in_fitting_batches
from tavcli.errors import BadInput
from tavcli.method import ddim
from tavcli.method.attention import inflate, video_forward
from tavcli.method.models import decode_latents, encode_prompts, load_base
from tavcli.method.params import AdapterSpec, EditSettings, Scheduler, TuneSettings
from tavcli.method.pipeline import TuneAVideo
from tavcli.method.random_base import SD_V1_SCHEDULER

SIZE = 32  # pixels: 4x4 latents, so that every scheduler runs in seconds on a loaded CPU


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def clip(n: int = 3, size: int = SIZE) -> np.ndarray:
    """A smooth clip (a colour ramp under a bar that moves): something the VAE keeps, unlike pixel noise."""
    y, x = np.mgrid[0:size, 0:size]
    frames = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        frames[i] = np.stack([x * 255 // size, y * 255 // size, np.full_like(x, 60 + 40 * i)], -1)
        frames[i, :, 4 * i:4 * i + 6] = 255
    return frames


@pytest.fixture
def tuned(tiny_base_dir, tmp_path) -> TuneAVideo:
    """A full adapter tuned a few steps, saved in fp32 and loaded back as `tav edit` loads it."""
    tav = TuneAVideo.create(load_base(str(tiny_base_dir), device="cpu"))
    tav.tune(clip(), "a bar slides right", TuneSettings(steps=2, lr=1e-3))
    tav.save_adapter(tmp_path / "adapter", dtype=torch.float32)
    return TuneAVideo.from_adapter(load_base(str(tiny_base_dir), device="cpu"), tmp_path / "adapter")


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


# --- the defaults are today's edit, bit for bit --------------------------------------------------------------


def reference_generate(tav: TuneAVideo, prompt: str, steps: int, guidance: float, start: torch.Tensor) -> np.ndarray:
    """tav's edit as main (4589861) computed it: deterministic DDIM with batched classifier-free guidance."""
    schedule = ddim.ddim_schedule(tav.base.scheduler_config, steps)
    text, uncond = encode_prompts(tav.base, [prompt]), encode_prompts(tav.base, [""])
    x = start.float()
    with torch.no_grad():
        for t, t_prev in schedule.pairs():
            eps_u, eps_c = video_forward(tav.unet, torch.cat([x, x]), t, torch.cat([uncond, text])).float().split(1)
            eps = eps_u + guidance * (eps_c - eps_u)
            a, a_prev = schedule.alpha(t), schedule.alpha(t_prev)
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            x = (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps).to(x.dtype)
    return decode_latents(tav.base, x)[0]


def test_defaults_render_todays_edit_bit_for_bit(tuned):
    noise = tuned.invert(clip(), steps=4)
    got = tuned.generate(["an astronaut"], EditSettings(steps=3, guidance=5.0), noise=noise)
    assert np.array_equal(got[0], reference_generate(tuned, "an astronaut", 3, 5.0, noise))
    g = torch.Generator().manual_seed(3)  # --no-inversion: the seed's Gaussian draw, as before
    start = torch.randn(1, 2, 4, SIZE // 8, SIZE // 8, generator=g)
    got = tuned.generate(["an astronaut"], EditSettings(steps=3, guidance=5.0, inversion=False, seed=3), frames=2,
                         height=SIZE, width=SIZE)
    assert np.array_equal(got[0], reference_generate(tuned, "an astronaut", 3, 5.0, start))


# --- strength -----------------------------------------------------------------------------------------------


def test_partial_inversion_is_the_first_steps_of_the_whole_one(tiny_unet):
    unet = inflate(tiny_unet())
    torch.manual_seed(0)
    source, text = torch.randn(1, 3, 4, 8, 8), torch.randn(1, 77, 32)
    s = ddim.ddim_schedule(SD_V1_SCHEDULER, 10)
    seen = []
    ddim.invert(unet, source, text, s, callback=seen.append)
    assert seen == list(range(10))
    assert torch.equal(ddim.invert(unet, source, text, s, steps=10), ddim.invert(unet, source, text, s))
    half = ddim.invert(unet, source, text, s, steps=5)
    assert s.tail(5).timesteps == s.timesteps[5:] and s.tail(5).pairs() == s.pairs()[5:]
    assert s.tail(1).pairs() == [(1, 1 - 1000)]  # the last step goes to final_alpha, as in the whole schedule
    # sampling the tail back with the same prompt returns near the source, nearer than from the whole inversion
    back = ddim.sample(unet, half, text, text, s.tail(5), guidance=1.0)
    whole = ddim.sample(unet, ddim.invert(unet, source, text, s), text, text, s, guidance=1.0)
    assert (back - source).norm() < (whole - source).norm()


def test_lower_strength_stays_closer_to_the_source(tuned):
    """An edit to another prompt (10 steps, guidance 7.5), as `generate` runs it: the partial inversion, then
    the schedule's tail. Its distance to the source's latents, relative, on the CPU, 2026-12-02, this tiny
    base: 0.18 at strength 0.1 (1 step), 4.1 at 0.2, 6.6 at 0.3, 10.5 at 0.5, 24.0 at 0.7, 76.6 at 1 (a
    random UNet at guidance 7.5 strays far: the order is the point, not the size). In pixels the tiny random
    VAE flattens it all (39.3, 39.5, 39.6 at 0.2, 0.5, 1), so the latents are compared."""
    source = clip()
    latents = tuned.latents(source)[0]
    text, uncond, empty = (encode_prompts(tuned.base, [p]) for p in ("a purple cat dances", "", ""))
    schedule = ddim.ddim_schedule(tuned.base.scheduler_config, 10)
    distance = {}
    for strength in (0.2, 0.5, 1.0):
        settings = EditSettings(steps=10, guidance=7.5, strength=strength)
        n = settings.partial_steps()
        start = tuned.invert(source, 10, strength=strength)
        assert torch.equal(start, ddim.invert(tuned.unet, latents, empty, schedule, steps=n))
        edited = ddim.sample(tuned.unet, start, text, uncond, schedule.tail(n), 7.5)
        distance[strength] = ((edited - latents).norm() / latents.norm()).item()
        steps = []  # and generate runs exactly these n steps from it
        video = tuned.generate(["a purple cat dances"], settings, noise=start, callback=steps.append)[0]
        assert steps == list(range(n)) and np.array_equal(video, decode_latents(tuned.base, edited)[0])
    assert distance[0.2] < distance[0.5] < distance[1.0], distance
    assert distance[0.2] < 0.25 * distance[1.0], distance


def test_strength_below_one_needs_the_partial_inversion(tuned):
    with pytest.raises(ValueError, match="partial inversion"):
        tuned.generate(["a"], EditSettings(steps=4, strength=0.5), frames=3, height=SIZE, width=SIZE)


# --- eta and seeds ------------------------------------------------------------------------------------------


def test_eta_step_is_diffusers_ddim_step():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(SD_V1_SCHEDULER)
    sched.set_timesteps(10)
    s = ddim.ddim_schedule(SD_V1_SCHEDULER, 10)
    g = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(1, 2, 4, 4, 4, generator=g) for _ in range(3))
    for t, t_prev in s.pairs()[3], s.pairs()[-1]:
        want = sched.step(eps, t, x, eta=0.7, variance_noise=z).prev_sample
        got = ddim.ddim_step(x, eps, s.alpha(t), s.alpha(t_prev), eta=0.7, noise=z)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got, ddim.ddim_step(x, eps, s.alpha(t), s.alpha(t_prev)))


def test_eta_with_seeds_renders_one_video_each_and_batching_changes_none(tuned):
    noise = tuned.invert(clip(), steps=4)
    batch = tuned.generate(["a", "b"], EditSettings(steps=4, guidance=5.0, eta=1.0, seeds=(1, 2, 3)), noise=noise)
    assert batch.shape == (6, 3, SIZE, SIZE, 3)  # prompt-major: a/1, a/2, a/3, b/1, b/2, b/3
    assert len({v.tobytes() for v in batch}) == 6
    alone = tuned.generate(["b"], EditSettings(steps=4, guidance=5.0, eta=1.0, seed=2), noise=noise)[0]
    assert np.abs(alone.astype(int) - batch[4].astype(int)).max() <= 1  # a seed is a seed, batched or not
    # without eta, DDIM from the inversion draws nothing: another seed is the very same video
    calm = [tuned.generate(["a"], EditSettings(steps=4, guidance=5.0, seed=seed), noise=noise)[0] for seed in (1, 2)]
    assert np.array_equal(calm[0], calm[1])


def test_seeds_from_noise_differ_without_eta(tuned):
    videos = tuned.generate(["a"], EditSettings(steps=3, inversion=False, seeds=(4, 5)), frames=2, height=SIZE,
                            width=SIZE)
    assert videos.shape[0] == 2 and not np.array_equal(videos[0], videos[1])
    one = tuned.generate(["a"], EditSettings(steps=3, inversion=False, seed=5), frames=2, height=SIZE, width=SIZE)
    assert np.abs(one[0].astype(int) - videos[1].astype(int)).max() <= 1


def test_batches_halve_while_they_do_not_fit():
    calls = []

    def render(batch):
        calls.append(batch)
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (pretend)")
        return [f"video {seed}" for seed in batch]

    assert in_fitting_batches(render, (1, 2, 3, 4, 5)) == [f"video {i}" for i in range(1, 6)]
    assert calls == [(1, 2, 3, 4, 5), (1, 2, 3), (1, 2), (3, 4), (5,)]
    with pytest.raises(torch.OutOfMemoryError):
        in_fitting_batches(lambda batch: (_ for _ in ()).throw(torch.OutOfMemoryError("no")), (1, 2))


# --- diffusers' schedulers ----------------------------------------------------------------------------------


def test_every_scheduler_samples_from_noise_and_differs_from_ddim(tuned):
    """Each scheduler runs through `generate` (seeded, reproducible, the steps asked for on the progress bar)
    and takes another path than DDIM from the same noise. Compared in latents: the tiny random VAE flattens
    pixels. Relative distance to DDIM's latents on the CPU, 2026-12-02 (6 steps, guidance 5): dpm++ 0.11,
    euler 0.0015 (Euler on the probability-flow ODE is DDIM but for its last step, which goes to sigma 0 rather
    than to alpha-bar[0]), euler-a 0.53, pndm 0.056, lms 0.011."""
    g = torch.Generator().manual_seed(7)
    start = torch.randn(1, 2, 4, SIZE // 8, SIZE // 8, generator=g)
    text, uncond = encode_prompts(tuned.base, ["a"]), encode_prompts(tuned.base, [""])
    ddim_latents = ddim.sample(tuned.unet, start, text, uncond, ddim.ddim_schedule(tuned.base.scheduler_config, 6), 5.0)
    ddim_video = tuned.generate(["a"], EditSettings(steps=6, guidance=5.0, inversion=False, seed=7), frames=2,
                                height=SIZE, width=SIZE)[0]
    for scheduler in Scheduler.choices()[1:]:
        settings = EditSettings(steps=6, guidance=5.0, inversion=False, seed=7, scheduler=scheduler)
        steps = []
        video = tuned.generate(["a"], settings, frames=2, height=SIZE, width=SIZE, callback=steps.append)[0]
        assert steps[0] == 0 and steps[-1] == 5 and sorted(set(steps)) == list(range(6)), (scheduler, steps)
        again = tuned.generate(["a"], settings, frames=2, height=SIZE, width=SIZE)[0]
        assert np.array_equal(again, video) and not np.array_equal(video, ddim_video), scheduler
        generator = torch.Generator().manual_seed(7)
        torch.randn(start.shape, generator=generator)  # as generate draws the start, then the steps' noise
        latents = ddim.sample_with(ddim.diffusers_scheduler(scheduler, tuned.base.scheduler_config, 6), tuned.unet,
                                   start, text, uncond, 5.0, generators=[generator])
        assert np.array_equal(decode_latents(tuned.base, latents)[0], video), scheduler  # what generate ran
        distance = ((latents - ddim_latents).norm() / ddim_latents.norm()).item()
        assert distance > (5e-4 if scheduler == "euler" else 5e-3), (scheduler, distance)
    seeded = [tuned.generate(["a"], EditSettings(steps=6, inversion=False, seed=7, scheduler="euler-a"), frames=2,
                             height=SIZE, width=SIZE)[0] for _ in range(2)]
    assert np.array_equal(*seeded)


def test_diffusers_ddim_scheduler_agrees_with_tavs_ddim(tuned):
    """The two DDIMs (tav's function, diffusers' scheduler through `sample_with`) are one method."""
    g = torch.Generator().manual_seed(0)
    start, text = torch.randn(1, 2, 4, 4, 4, generator=g), encode_prompts(tuned.base, ["a"])
    uncond = encode_prompts(tuned.base, [""])
    ours = ddim.sample(tuned.unet, start, text, uncond, ddim.ddim_schedule(tuned.base.scheduler_config, 5), 5.0)
    theirs = ddim.sample_with(ddim.diffusers_scheduler("ddim", tuned.base.scheduler_config, 5), tuned.unet, start,
                              text, uncond, 5.0)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_lms_coefficients_without_scipy_are_the_integral():
    lms = ddim.diffusers_scheduler("lms", SD_V1_SCHEDULER, 20)
    sigmas = lms.sigmas.double().numpy()
    for order, t, current in ((1, 3, 0), (2, 5, 1), (4, 9, 0), (4, 9, 3)):
        def basis(tau, order=order, t=t, current=current):
            prod = np.ones_like(tau)
            for k in range(order):
                if k != current:
                    prod *= (tau - sigmas[t - k]) / (sigmas[t - current] - sigmas[t - k])
            return prod
        tau = np.linspace(sigmas[t], sigmas[t + 1], 20001)
        want = np.trapezoid(basis(tau), tau)
        assert lms.get_lms_coefficient(order, t, current) == pytest.approx(want, rel=1e-6, abs=1e-9)


# --- the adapter scale --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_adapter_scale_zero_is_the_base_and_one_is_the_tuned_model(tiny_base_dir, tmp_path, kind):
    spec = AdapterSpec(kind, rank=4, temporal_seed=2)
    tav = TuneAVideo.create(load_base(str(tiny_base_dir), device="cpu"), spec)
    tav.tune(clip(), "a bar slides right", TuneSettings(steps=3, lr=1e-2))
    tav.save_adapter(tmp_path / "a", dtype=torch.float32)
    settings = EditSettings(steps=3, guidance=5.0, inversion=False, seed=1)
    g = torch.Generator().manual_seed(9)
    x, text = torch.randn(1, 3, 4, 4, 4, generator=g), torch.randn(1, 77, 32, generator=g)

    def render(model: TuneAVideo) -> tuple[np.ndarray, torch.Tensor]:
        """An edit's frames, and the UNet's noise prediction for a fixed input (pixels hide small changes)."""
        with torch.no_grad():
            eps = video_forward(model.unet, x, 501, text)
        return model.generate(["a"], settings, frames=3, height=SIZE, width=SIZE)[0], eps

    def loaded(scale: float | None) -> tuple[np.ndarray, torch.Tensor]:
        return render(TuneAVideo.from_adapter(load_base(str(tiny_base_dir), device="cpu"), tmp_path / "a",
                                              **({} if scale is None else {"scale": scale})))

    # the base: its own weights in the same video UNet (frame attention, clip GroupNorm), no temporal layers
    base = load_base(str(tiny_base_dir), device="cpu")
    inflate(base.unet, attention=spec.attention, norm=spec.norm, temporal=False)
    base_video, base_eps = render(TuneAVideo(base, spec, []))
    (tuned_video, tuned_eps), (zero_video, zero_eps), (_, half_eps) = loaded(None), loaded(0.0), loaded(0.5)
    assert np.array_equal(zero_video, base_video) and torch.equal(zero_eps, base_eps)
    one_video, one_eps = loaded(1.0)
    assert np.array_equal(one_video, tuned_video) and torch.equal(one_eps, tuned_eps)
    tuning = (tuned_eps - base_eps).norm()
    assert tuning > 1e-3 * base_eps.norm()  # the tuning shows, so the two checks above can fail
    # half-way: the deltas are linear in the scale but for the temporal attention's q/k/v (kept as tuned)
    assert 0.3 * tuning < (half_eps - base_eps).norm() < 0.7 * tuning
    assert 0.3 * tuning < (half_eps - tuned_eps).norm() < 0.7 * tuning


# --- bounds ---------------------------------------------------------------------------------------------------


BAD_SETTINGS = {
    "strength 0": ({"strength": 0.0}, "strength must be in (0, 1]"),
    "strength above 1": ({"strength": 1.5}, "strength must be in (0, 1]"),
    "strength nan": ({"strength": math.nan}, "strength must be a finite number"),
    "strength from noise": ({"strength": 0.5, "inversion": False}, "needs the inversion"),
    "negative eta": ({"eta": -0.1}, "eta must be at least 0"),
    "unknown scheduler": ({"scheduler": "heun"}, "'heun' is not known; use one of ddim, dpm++, euler"),
    "scheduler with the inversion": ({"scheduler": "euler"}, "only ddim can start from it; pass --no-inversion"),
    "eta with euler": ({"scheduler": "euler", "inversion": False, "eta": 0.5}, "eta is DDIM's"),
    "a seed twice": ({"seeds": (1, 2, 1), "eta": 1.0}, "seed 1 twice"),
    "seeds that change nothing": ({"seeds": (1, 2)}, "same video for each seed"),
}


@pytest.mark.parametrize("case", BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_bad_edit_settings_are_refused(case):
    values, words = case
    with pytest.raises(BadInput) as e:
        EditSettings(**values)
    assert words in str(e.value)


def test_adapter_scale_must_be_finite_and_seeds_need_out_dir():
    for scale in (math.inf, math.nan):
        with pytest.raises(BadInput, match="adapter_scale must be a finite number"):
            EditJob(ref="x", prompts=("a",), adapter_scale=scale)
    EditJob(ref="x", prompts=("a",), adapter_scale=-0.5)  # extrapolating away from the tuning is allowed
    with pytest.raises(BadInput, match="--seeds asks for several videos"):
        EditJob(ref="x", prompts=("a",), output="x.mp4", settings=EditSettings(seeds=(1, 2), eta=1.0))
