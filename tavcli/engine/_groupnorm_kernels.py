"""Triton kernels of the clip GroupNorm (`tavcli.engine.triton_groupnorm` launches them and says why).

Imported only where triton is: torch's CPU builds come without it.
"""

import triton
import triton.language as tl


@triton.jit
def _rows(pid, rows, c, frames, groups, cg, ROWS: tl.constexpr):
    """A tile's row indices, their mask, channel and (clip, group) index."""
    r = pid * ROWS + tl.arange(0, ROWS)
    live = r < rows
    image = r // c
    ch = r - image * c
    return r, live, ch, (image // frames) * groups + ch // cg


@triton.jit
def _dz(z_hat, dy, w, b, SILU: tl.constexpr):
    """The gradient at the norm's output z = w*x_hat + b, through the SiLU when it is fused."""
    if SILU:
        z = z_hat * w + b
        sig = tl.sigmoid(z)
        return dy * sig * (1.0 + z * (1.0 - sig))
    return dy


@triton.jit
def _accumulate(X, DY, offs, m, mean, rstd, w, b, acc1, acc2, BACKWARD: tl.constexpr, SILU: tl.constexpr):
    """One tile of `row_sums`: acc1 += x, acc2 += x^2 (forward); acc1 += dz, acc2 += dz*x_hat (backward)."""
    x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
    if BACKWARD:
        x_hat = (x - mean) * rstd
        dz = _dz(x_hat, tl.load(DY + offs, mask=m, other=0.0).to(tl.float32), w, b, SILU)
        dz = tl.where(m, dz, 0.0)
        return acc1 + dz, acc2 + dz * x_hat
    return acc1 + x, acc2 + x * x


@triton.jit
def _normalise(X, DY, OUT, offs, m, mean, rstd, w, b, m1, m2, BACKWARD: tl.constexpr, SILU: tl.constexpr):
    """One tile of `apply`, its coefficients loaded: y = [silu](w*x_hat + b), or dx from the backward's
    per-(clip, group) means m1 = mean(w*dz), m2 = mean(w*dz*x_hat)."""
    x_hat = (tl.load(X + offs, mask=m, other=0.0).to(tl.float32) - mean) * rstd
    if BACKWARD:
        dz = _dz(x_hat, tl.load(DY + offs, mask=m, other=0.0).to(tl.float32), w, b, SILU)
        out = rstd * (w * dz - m1 - x_hat * m2)
    else:
        out = x_hat * w + b
        if SILU:
            out = out * tl.sigmoid(out)
    tl.store(OUT + offs, out.to(OUT.dtype.element_ty), mask=m)


@triton.jit
def _backward_affine(STATS, W, B, bg, ch, live, rows, c, frames, groups, BACKWARD: tl.constexpr,
                     N: tl.constexpr):
    """The backward's mean, 1/std, weight and bias for N channel rows (fp32); zeros for the forward, which
    sums x and x^2 only."""
    if BACKWARD:
        total = (rows // (frames * c)) * groups  # STATS is (2, clips * groups): means, then 1/stds
        mean = tl.load(STATS + bg, mask=live, other=0.0)
        rstd = tl.load(STATS + total + bg, mask=live, other=0.0)
        w = tl.load(W + ch, mask=live, other=0.0).to(tl.float32)
        b = tl.load(B + ch, mask=live, other=0.0).to(tl.float32)
    else:
        mean = tl.zeros([N], dtype=tl.float32)
        rstd = tl.zeros([N], dtype=tl.float32)
        w = tl.zeros([N], dtype=tl.float32)
        b = tl.zeros([N], dtype=tl.float32)
    return mean, rstd, w, b


@triton.jit
def row_sums(X, DY, STATS, W, B, OUT, rows, hw, c, frames, groups, cg,
             ROWS: tl.constexpr, COLS: tl.constexpr, BACKWARD: tl.constexpr, SILU: tl.constexpr):
    """Per row: sum x and sum x^2 (forward); sum dz and sum dz*x_hat (backward)."""
    r, live, ch, bg = _rows(tl.program_id(0), rows, c, frames, groups, cg, ROWS)
    base = r.to(tl.int64)[:, None] * hw
    acc1 = tl.zeros([ROWS, COLS], dtype=tl.float32)
    acc2 = tl.zeros([ROWS, COLS], dtype=tl.float32)
    mean, rstd, w, b = _backward_affine(STATS, W, B, bg, ch, live, rows, c, frames, groups, BACKWARD, ROWS)
    for start in range(0, hw, COLS):
        col = start + tl.arange(0, COLS)[None, :]
        m = live[:, None] & (col < hw)
        acc1, acc2 = _accumulate(X, DY, base + col, m, mean[:, None], rstd[:, None], w[:, None], b[:, None],
                                 acc1, acc2, BACKWARD, SILU)
    tl.store(OUT + r, tl.sum(acc1, 1), mask=live)
    tl.store(OUT + rows + r, tl.sum(acc2, 1), mask=live)


@triton.jit
def finalise(SUMS, W, OUT, hw, c, frames, groups, cg, n, eps, splits,
             BACKWARD: tl.constexpr, BLOCK: tl.constexpr):
    """Per (clip, group): mean and 1/std (forward); mean of w*dz and of w*dz*x_hat (backward). SUMS holds
    `splits` partial sums per row (of disjoint pixel ranges): (2, splits, rows)."""
    pid = tl.program_id(0)
    clip, g = pid // groups, pid % groups
    rows = (tl.num_programs(0) // groups) * frames * c
    acc1 = tl.zeros([BLOCK], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK], dtype=tl.float32)
    per_split = frames * cg
    for start in range(0, per_split * splits, BLOCK):
        k = start + tl.arange(0, BLOCK)
        live = k < per_split * splits
        split, k = k // per_split, k % per_split
        f, j = k // cg, k % cg
        r = split * rows + (clip * frames + f) * c + g * cg + j
        s1 = tl.load(SUMS + r, mask=live, other=0.0)
        s2 = tl.load(SUMS + rows * splits + r, mask=live, other=0.0)
        if BACKWARD:
            w = tl.load(W + g * cg + j, mask=live, other=0.0).to(tl.float32)
            s1, s2 = s1 * w, s2 * w
        acc1 += s1
        acc2 += s2
    total = tl.num_programs(0)
    m1 = tl.sum(acc1, 0) / n
    m2 = tl.sum(acc2, 0) / n
    if BACKWARD:
        tl.store(OUT + pid, m1)
        tl.store(OUT + total + pid, m2)
    else:
        # E[x^2] - E[x]^2 in fp32, as the PyTorch-ops norm computes it
        tl.store(OUT + pid, m1)
        tl.store(OUT + total + pid, 1.0 / tl.sqrt(tl.maximum(m2 - m1 * m1, 0.0) + eps))


@triton.jit
def apply(X, DY, STATS, MEANS, W, B, OUT, rows, hw, c, frames, groups, cg,
          ROWS: tl.constexpr, COLS: tl.constexpr, BACKWARD: tl.constexpr, SILU: tl.constexpr):
    """y = [silu](w*x_hat + b) (forward); dx = rstd*(w*dz - mean(w*dz) - x_hat*mean(w*dz*x_hat)) (backward)."""
    r, live, ch, bg = _rows(tl.program_id(0), rows, c, frames, groups, cg, ROWS)
    total = (rows // (frames * c)) * groups
    mean = tl.load(STATS + bg, mask=live, other=0.0)[:, None]
    rstd = tl.load(STATS + total + bg, mask=live, other=0.0)[:, None]
    w = tl.load(W + ch, mask=live, other=0.0).to(tl.float32)[:, None]
    b = tl.load(B + ch, mask=live, other=0.0).to(tl.float32)[:, None]
    col = tl.program_id(1) * COLS + tl.arange(0, COLS)[None, :]
    m = live[:, None] & (col < hw)
    offs = r.to(tl.int64)[:, None] * hw + col
    if BACKWARD:
        m1 = tl.load(MEANS + bg, mask=live, other=0.0)[:, None]
        m2 = tl.load(MEANS + total + bg, mask=live, other=0.0)[:, None]
    else:
        m1 = mean
        m2 = mean
    _normalise(X, DY, OUT, offs, m, mean, rstd, w, b, m1, m2, BACKWARD, SILU)


# --- channels-last (NHWC) activations -------------------------------------------------------------------
# An image's pixels are rows of C contiguous channels. A program takes one image's [PIXELS, CHANNELS] tile,
# channels last so that its loads are contiguous; per-channel and per-(clip, group) coefficients are
# per-column loads. The row sums of a channel are split over pixel ranges of SPLIT pixels, one program each,
# so that a large image is many programs: (2, splits, images * C) partial sums, which `finalise` adds up.


@triton.jit
def _nhwc_channels(image, cblock, c, frames, groups, cg, CHANNELS: tl.constexpr):
    """A tile's channels, their mask, their row (image * c + channel) and (clip, group) index."""
    ch = cblock * CHANNELS + tl.arange(0, CHANNELS)
    return ch, ch < c, image * c + ch, (image // frames) * groups + ch // cg


@triton.jit
def _nhwc_offsets(image, pixel0, ch, live_c, hw, c, PIXELS: tl.constexpr):
    """A [PIXELS, CHANNELS] tile's offsets and mask."""
    px = pixel0 + tl.arange(0, PIXELS)
    m = (px < hw)[:, None] & live_c[None, :]
    return image.to(tl.int64) * hw * c + px.to(tl.int64)[:, None] * c + ch[None, :], m


@triton.jit
def row_sums_nhwc(X, DY, STATS, W, B, OUT, rows, hw, c, frames, groups, cg,
                  PIXELS: tl.constexpr, CHANNELS: tl.constexpr, SPLIT: tl.constexpr,
                  BACKWARD: tl.constexpr, SILU: tl.constexpr):
    """Per channel of an image, over this program's SPLIT pixels: sum x and sum x^2 (forward); sum dz and sum
    dz*x_hat (backward)."""
    image, split, cblock = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ch, live_c, row, bg = _nhwc_channels(image, cblock, c, frames, groups, cg, CHANNELS)
    acc1 = tl.zeros([PIXELS, CHANNELS], dtype=tl.float32)
    acc2 = tl.zeros([PIXELS, CHANNELS], dtype=tl.float32)
    mean, rstd, w, b = _backward_affine(STATS, W, B, bg, ch, live_c, rows, c, frames, groups, BACKWARD, CHANNELS)
    for start in range(0, SPLIT, PIXELS):
        offs, m = _nhwc_offsets(image, split * SPLIT + start, ch, live_c, hw, c, PIXELS)
        acc1, acc2 = _accumulate(X, DY, offs, m, mean[None, :], rstd[None, :], w[None, :], b[None, :],
                                 acc1, acc2, BACKWARD, SILU)
    splits = tl.num_programs(1)
    tl.store(OUT + split * rows + row, tl.sum(acc1, 0), mask=live_c)
    tl.store(OUT + (splits + split) * rows + row, tl.sum(acc2, 0), mask=live_c)


@triton.jit
def apply_nhwc(X, DY, STATS, MEANS, W, B, OUT, rows, hw, c, frames, groups, cg,
               PIXELS: tl.constexpr, CHANNELS: tl.constexpr, BACKWARD: tl.constexpr, SILU: tl.constexpr):
    """`apply` on a channels-last tile."""
    image, pblock, cblock = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ch, live_c, _row, bg = _nhwc_channels(image, cblock, c, frames, groups, cg, CHANNELS)
    offs, m = _nhwc_offsets(image, pblock * PIXELS, ch, live_c, hw, c, PIXELS)
    total = (rows // (frames * c)) * groups
    mean = tl.load(STATS + bg, mask=live_c, other=0.0)[None, :]
    rstd = tl.load(STATS + total + bg, mask=live_c, other=0.0)[None, :]
    w = tl.load(W + ch, mask=live_c, other=0.0).to(tl.float32)[None, :]
    b = tl.load(B + ch, mask=live_c, other=0.0).to(tl.float32)[None, :]
    if BACKWARD:
        m1 = tl.load(MEANS + bg, mask=live_c, other=0.0)[None, :]
        m2 = tl.load(MEANS + total + bg, mask=live_c, other=0.0)[None, :]
    else:
        m1 = mean
        m2 = mean
    _normalise(X, DY, OUT, offs, m, mean, rstd, w, b, m1, m2, BACKWARD, SILU)
