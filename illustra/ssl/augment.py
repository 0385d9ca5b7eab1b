"""Batched SimCLR views: every augmentation is one tensor operation over the whole batch.

Per-sample PIL transforms would cost ~0.1 ms of Python each and starve 2 CPU cores; here a
random resized crop + flip is one `grid_sample` with per-sample affine matrices, colour jitter is
broadcast arithmetic, blur a grouped convolution. Each step is switched and sized by config
(blur, for one, erases the texture that photo detection needs).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from illustra.config import yaml_defaults
from illustra.train.random import rand

GRAY_WEIGHTS = (0.299, 0.587, 0.114)
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


@dataclass(frozen=True)
@yaml_defaults("ssl.yaml", "views")
class ViewConfig:
    """How one SimCLR view is made from a cached image."""

    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    flip: float
    jitter: float  # probability of colour jitter
    brightness: float
    contrast: float
    saturation: float
    hue: float
    grayscale: float
    blur: float  # probability of Gaussian blur (0 keeps photo texture cues)
    blur_sigma: tuple[float, float]
    # style-breaking, content-keeping steps (issue #16): each a per-image probability, 0 = off
    line_art: float  # replace by a line-art render (dark edges on white) of the image
    outline: float  # thicken the dark strokes (3x3 min filter)
    channel_shuffle: float  # permute the RGB channels (a palette permutation)
    invert: float  # colour inversion
    random_conv: float  # RandConv: mix with a random 3x3 convolution of the image (new textures and colours)

    def to_dict(self) -> dict:
        """Plain dict for logs and metadata."""
        return asdict(self)


def _uniform(low: float, high: float, n: int, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """n uniform samples in [low, high) on `like`'s device (the core checks the generator's device)."""
    return rand(n, gen, like) * (high - low) + low


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) or (B, 3, H, W) -> float (B, 3, H, W) in [0, 1]."""
    if images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    return images.float().div_(255.0)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> the encoder's input scale."""
    mean = images.new_tensor(MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(STD).view(1, 3, 1, 1)
    return (images - mean) / std


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a [0, 1] batch to `size` (antialiased when shrinking): the eval-time view."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def crop_and_flip(images: torch.Tensor, size: int, config: ViewConfig, gen: torch.Generator) -> torch.Tensor:
    """Random resized crop + horizontal flip of every image, as one affine grid sample."""
    n, device = images.shape[0], images.device
    area = _uniform(*config.crop_scale, n, gen, images)
    log_ratio = _uniform(math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1]), n, gen, images)
    ratio = log_ratio.exp()
    half_w = (area * ratio).sqrt().clamp(max=1.0)  # half-extent in [-1, 1] coordinates = width fraction
    half_h = (area / ratio).sqrt().clamp(max=1.0)
    centre_x = (rand(n, gen, images) * 2 - 1) * (1 - half_w)
    centre_y = (rand(n, gen, images) * 2 - 1) * (1 - half_h)
    flip = torch.where(rand(n, gen, images) < config.flip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = half_w * flip, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = half_h, centre_y
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gray(images: torch.Tensor) -> torch.Tensor:
    """Luma of a batch, (B, 1, H, W)."""
    weights = images.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def colour_jitter(images: torch.Tensor, config: ViewConfig, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter with per-image factors, on a random subset."""
    n = images.shape[0]
    chosen = (rand(n, gen, images) < config.jitter).float().view(n, 1, 1, 1)

    def factor(strength: float) -> torch.Tensor:
        sampled = _uniform(1 - strength, 1 + strength, n, gen, images).view(n, 1, 1, 1)
        return chosen * sampled + (1 - chosen)

    out = images * factor(config.brightness)
    mean = gray(out).mean(dim=(2, 3), keepdim=True)
    out = (out - mean) * factor(config.contrast) + mean
    luma = gray(out)
    out = (out - luma) * factor(config.saturation) + luma
    if config.hue > 0:
        angle = _uniform(-config.hue, config.hue, n, gen, images) * 2 * math.pi * chosen.view(n)
        out = _rotate_hue(out, angle)
    return out.clamp_(0.0, 1.0)


def _rotate_hue(images: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Hue rotation by `angle` radians per image: a rotation of the chroma plane in YIQ space."""
    to_yiq = images.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    from_yiq = torch.linalg.inv(to_yiq)
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.zeros(angle.shape[0], 3, 3, device=images.device, dtype=images.dtype)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2], rotation[:, 2, 1], rotation[:, 2, 2] = cos, -sin, sin, cos
    matrix = from_yiq @ rotation @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", matrix, images)


def random_grayscale(images: torch.Tensor, probability: float, gen: torch.Generator) -> torch.Tensor:
    """Replace a random subset of images by their luma."""
    chosen = (rand(images.shape[0], gen, images) < probability).view(-1, 1, 1, 1)
    return torch.where(chosen, gray(images).expand_as(images), images)


def random_blur(images: torch.Tensor, config: ViewConfig, gen: torch.Generator) -> torch.Tensor:
    """Gaussian blur with a per-image sigma on a random subset (one grouped convolution)."""
    n, channels, height, width = images.shape
    sigma = _uniform(*config.blur_sigma, n, gen, images)
    chosen = rand(n, gen, images) < config.blur
    sigma = torch.where(chosen, sigma, torch.full_like(sigma, 1e-3))
    radius = max(1, math.ceil(2 * config.blur_sigma[1]))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(channels, 0)  # (B*C, k)
    flat = F.pad(images.reshape(1, n * channels, height, width), (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel.view(-1, 1, 1, 2 * radius + 1), groups=n * channels)
    flat = F.conv2d(flat, kernel.view(-1, 1, 2 * radius + 1, 1), groups=n * channels)
    return flat.view(n, channels, height, width)


def _chosen(images: torch.Tensor, probability: float, gen: torch.Generator) -> torch.Tensor:
    """(B, 1, 1, 1) mask: which images a step with this probability applies to."""
    return (rand(images.shape[0], gen, images) < probability).view(-1, 1, 1, 1)


def line_art(images: torch.Tensor, probability: float, gen: torch.Generator) -> torch.Tensor:
    """Dark Sobel edges of the luma on white, on a random subset: what is drawn, without its colours or shading."""
    luma = F.pad(gray(images), (1, 1, 1, 1), mode="replicate")
    kernel = images.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    gx = F.conv2d(luma, kernel.view(1, 1, 3, 3))
    gy = F.conv2d(luma, kernel.t().contiguous().view(1, 1, 3, 3))
    magnitude = (gx.square() + gy.square()).sqrt()
    scale = magnitude.flatten(1).amax(1).clamp(min=1e-3).view(-1, 1, 1, 1)  # per image: its strongest edge is black
    lines = (1.0 - (2.0 * magnitude / scale).clamp(0.0, 1.0)).expand_as(images)
    return torch.where(_chosen(images, probability, gen), lines, images)


def outline(images: torch.Tensor, probability: float, gen: torch.Generator) -> torch.Tensor:
    """Thicker dark strokes (a 3x3 min filter) on a random subset: bold-outline styles from thin ones.

    Only thicker: a max filter that thins strokes erases 1-2 px line art at 32 px (looked at)."""
    thicker = -F.max_pool2d(-images, 3, 1, 1)
    return torch.where(_chosen(images, probability, gen), thicker, images)


def channel_shuffle(images: torch.Tensor, probability: float, gen: torch.Generator) -> torch.Tensor:
    """A random permutation of the RGB channels per image, on a random subset."""
    n = images.shape[0]
    order = rand(n * 3, gen, images).view(n, 3).argsort(1)
    shuffled = torch.gather(images, 1, order.view(n, 3, 1, 1).expand_as(images))
    return torch.where(_chosen(images, probability, gen), shuffled, images)


def invert(images: torch.Tensor, probability: float, gen: torch.Generator) -> torch.Tensor:
    """1 - image on a random subset."""
    return torch.where(_chosen(images, probability, gen), 1.0 - images, images)


def random_conv(images: torch.Tensor, probability: float, gen: torch.Generator) -> torch.Tensor:
    """RandConv (Xu et al., ICLR 2021): a random 3x3 colour convolution per image, rescaled to [0, 1] and
    mixed with the image by a random weight; shapes stay, textures and colours change. One grouped conv."""
    n, channels, height, width = images.shape
    weight = (rand(n * channels * channels * 9, gen, images) * 2 - 1).view(n * channels, channels, 3, 3)
    flat = F.pad(images.reshape(1, n * channels, height, width), (1, 1, 1, 1), mode="replicate")
    out = F.conv2d(flat, weight, groups=n).view(n, channels, height, width)
    low = out.flatten(1).amin(1).view(n, 1, 1, 1)
    high = out.flatten(1).amax(1).view(n, 1, 1, 1)
    out = (out - low) / (high - low).clamp(min=1e-6)
    mix = rand(n, gen, images).view(n, 1, 1, 1)
    return torch.where(_chosen(images, probability, gen), mix * images + (1 - mix) * out, images)


def style_steps(view: torch.Tensor, config: ViewConfig, gen: torch.Generator) -> torch.Tensor:
    """The style-breaking steps that are switched on, in a fixed order (no random draw for a step that is off)."""
    if config.line_art > 0:
        view = line_art(view, config.line_art, gen)
    if config.outline > 0:
        view = outline(view, config.outline, gen)
    if config.channel_shuffle > 0:
        view = channel_shuffle(view, config.channel_shuffle, gen)
    if config.invert > 0:
        view = invert(view, config.invert, gen)
    if config.random_conv > 0:
        view = random_conv(view, config.random_conv, gen)
    return view


def make_view(images: torch.Tensor, size: int, config: ViewConfig, gen: torch.Generator) -> torch.Tensor:
    """One augmented, normalised view of a [0, 1] batch at `size` pixels."""
    view = crop_and_flip(images, size, config, gen)
    view = style_steps(view, config, gen)
    view = colour_jitter(view, config, gen)
    if config.grayscale > 0:
        view = random_grayscale(view, config.grayscale, gen)
    if config.blur > 0:
        view = random_blur(view, config, gen)
    return normalise(view)
