"""DANCE: decoy-enhanced saliency (METHODS.md, papers dance-*.txt).

A decoy x~ of x differs from x only inside a mask M and keeps the layer-l representation F_l
(almost) unchanged. Masks pack m patches of P x P pixels at stride S; a decoy budget N sets the
number of masks (N / 2 for the optimised decoys, two signs each) and m follows. Patches of one
mask are far enough apart that no unit of layer l sees two of them where N allows that, and
packed closer where it does not (docs/decoys.md). Optimised decoys push the masked pixels up
(s = +1) or down (s = -1) as far as the representation constraint allows; the blur, constant and
noise generators are the papers' proxies and controls. A base method's maps of the decoys, with
the original as one more member of the population, are aggregated per feature by their range
(or mean).

Tables and texts (P = 1, the papers' settings): a position is a feature or a token's whole
embedding vector, masks are packed over positions on the grid of `inputs.kinds` (one row of
positions, a text's embedding as channels), and the constant control fills a mask with the
data's mean (a table's feature means; a text's mean embedding), not the sample's own mean.
Blur is defined for images only.

Units: the L1 reward is in units of the pixel range, the representation penalty in units of
max|F_l(x)| per image; tau is relative to max|F_l(x)| (starts at 1), and lambda (1e4, ICLR
table A1) weighs the penalty in these normalised units.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from ..engine.keys import keyed_normal
from ..engine.layers import forward_to, receptive_field
from ..engine.optim import adam
from ..errors import SalauditError
from ..inputs.kinds import from_grid, grid_shape, to_grid
from ..inputs.models import OnGrid, PixelModel, on_grid
from .context import Context

Tensor = torch.Tensor
GENERATORS = ("dance", "blur", "constant", "noise")
INIT_CLAMP = 1e-3
MAX_LAMBDA = 1e20  # doubling stops here so lambda * excess^2 stays finite in float32
DEFAULT_DECOYS = 32  # the population size from the measured budget table (docs/decoys.md)
# Adam's step: the budget's masks hold many patches (often closer than a receptive field), and
# larger steps never settle within eps there (docs/decoys.md); the old rule's small masks take 0.1
BUDGET_LR, SMALL_MASK_LR = 0.001, 0.1
IMAGE_PATCH = 3  # P on images (ICLR A1); tables and texts swap single positions (P = 1)


@dataclass(frozen=True)
class DecoyConfig:
    """One decoy configuration; every base method that uses it shares its decoys.

    Masks: `patch` P (None: 3 on images, 1 on tables and texts), `stride` S. With a budget of
    `decoys` N the population has N decoys, so N / 2 masks for "dance" (N even) and N for the
    proxies; each mask holds about positions / masks patches, spaced `spacing` apart (None:
    P + RF - 1, RF the receptive field of `layer`, where the budget has room for that many
    masks per axis squared, else the largest spacing it has room for). With `decoys` None the
    old rule holds: `per_mask` m patches per mask (None: as many as keep a mask within
    `mask_fraction` of the pixels), always spaced P + RF - 1.
    Optimisation ("dance"): Adam with `lr` on the tanh variables (None: 0.001 with a budget,
    whose masks are large, 0.1 for the old rule's small masks), `steps_per_round`
    steps a round, at most `max_rounds` rounds (None: three times the rounds tau needs to reach
    eps, plus 20); success once the penalty is zero at relative tau <= `eps`. Defaults (N, eps,
    lr, steps) come from the measured trade-offs in docs/decoys.md.
    """

    generator: str = "dance"
    layer: str | None = None
    patch: int | None = None
    stride: int = 1
    decoys: int | None = DEFAULT_DECOYS
    spacing: int | None = None
    per_mask: int | None = None
    mask_fraction: float = 0.05
    eps: float = 0.1
    lr: float | None = None
    steps_per_round: int = 1
    max_rounds: int | None = None
    lambda0: float = 1e4
    tau_decay: float = 0.95
    blur_size: int = 5
    noise_sigma: float = 0.1

    def __post_init__(self):
        if self.generator not in GENERATORS:
            raise SalauditError(
                f"unknown decoy generator {self.generator!r}; valid: {', '.join(GENERATORS)}"
            )
        patch = self.patch or IMAGE_PATCH  # a table's or text's 1 is checked as it resolves
        if not 1 <= self.stride <= patch:
            raise SalauditError(
                f"decoy stride {self.stride} must be between 1 and the patch size {patch} "
                "so that masks cover every pixel"
            )
        if not 0 < self.eps < 1:
            raise SalauditError(f"decoy eps must be in (0, 1), not {self.eps}")
        if self.decoys is not None:
            two = self.generator == "dance"
            if self.decoys < 1 + two or (two and self.decoys % 2):
                raise SalauditError(
                    f"decoys={self.decoys}: the optimised decoys come in pairs (s = +1 and -1 on "
                    "each mask); give an even number of at least 2"
                    if two
                    else f"decoys={self.decoys}: give at least 1"
                )
        if self.spacing is not None and self.spacing < 1:
            raise SalauditError(f"decoy spacing must be at least 1, not {self.spacing}")

    @property
    def n_masks(self) -> int | None:
        """Masks the budget asks for (None without a budget)."""
        if self.decoys is None:
            return None
        return self.decoys // 2 if self.generator == "dance" else self.decoys

    def resolved(self, model: PixelModel) -> DecoyConfig:
        """This config with the layer, the spacing and m filled in for `model` (the layer
        checked; a budget the image cannot hold refused)."""
        if self.patch is None:
            return replace(self, patch=IMAGE_PATCH if model.kind == "image" else 1).resolved(model)
        layer = self.layer or model.default_layer("decoy")
        model.layer(layer)
        if model.kind != "image" and (self.generator == "blur" or self.patch != 1):
            raise SalauditError(
                f"decoys on {model.kind} inputs swap whole features or tokens (patch 1), and "
                "blur is defined for images only: use dance, constant or noise decoys with "
                "patch=1"
                if self.generator == "blur"
                else f"decoy patch {self.patch} on {model.kind} inputs: a {model.kind}'s "
                "positions are single features or tokens, give patch=1 (the papers' P = 1)"
            )
        _, h, w = grid_shape(model.input_shape)
        rounds = self.max_rounds or 3 * self.rounds_to_eps() + 20
        wide = self.patch + max(receptive_field(on_grid(model), layer)) - 1
        ys, xs = _origins(h, self.patch, self.stride), _origins(w, self.patch, self.stride)
        done = {"layer": layer, "max_rounds": rounds}
        if self.n_masks is None:
            m = self.per_mask or max(1, int(self.mask_fraction * h * w / self.patch**2))
            return replace(self, **done, per_mask=m, spacing=wide, lr=self.lr or SMALL_MASK_LR)
        if self.n_masks > len(ys) * len(xs):
            raise SalauditError(
                f"decoys={self.decoys} asks for {self.n_masks} masks, more than the "
                f"{len(ys) * len(xs)} patch positions of a {h}x{w} input at patch {self.patch}, "
                f"stride {self.stride}: give fewer decoys"
            )
        spacing = self.spacing or max(
            s for s in range(1, wide + 1) if _groups(ys, s) * _groups(xs, s) <= self.n_masks
        )
        if _groups(ys, spacing) * _groups(xs, spacing) > self.n_masks:
            raise SalauditError(
                f"decoy spacing {spacing} needs more masks than decoys={self.decoys} gives: "
                "leave spacing out or give more decoys"
            )
        counts = _allot([len(g) for g in _grouped(ys, xs, spacing).values()], self.n_masks)
        m = max(-(-size // c) for size, c in counts)
        return replace(self, **done, per_mask=m, spacing=spacing, lr=self.lr or BUDGET_LR)

    def rounds_to_eps(self) -> int:
        """Successful rounds tau needs to fall from 1 to eps."""
        return math.ceil(math.log(self.eps) / math.log(self.tau_decay))

    def params(self) -> dict:
        """The parameters that shape this generator's decoys (stored with them)."""
        keep = {"generator", "layer", "patch", "stride", "decoys", "spacing", "per_mask", "eps"}
        keep |= {"mask_fraction"} if self.decoys is None else set()
        keep |= {
            "dance": {"lr", "steps_per_round", "max_rounds", "lambda0", "tau_decay"},
            "blur": {"blur_size"},
            "noise": {"noise_sigma"},
            "constant": set(),
        }[self.generator]
        return {k: v for k, v in asdict(self).items() if k in keep}


@dataclass(frozen=True)
class MaskPacking:
    """n binary masks (n, H, W) and, per mask, its flattened pixel indices (n, L) padded with
    H * W (a slot past the image that is dropped)."""

    masks: Tensor
    index: Tensor

    @property
    def n(self) -> int:
        return len(self.masks)


def _origins(size: int, patch: int, stride: int) -> list[int]:
    """Patch origins along one axis: every `stride`, plus the last so the border is covered."""
    last = size - patch
    found = list(range(0, last + 1, stride))
    return found if found[-1] == last else [*found, last]


def _grouped(ys: list[int], xs: list[int], spacing: int) -> dict:
    """Patch origins grouped by origin modulo `spacing`: each group is spaced by construction."""
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for y in ys:
        for x in xs:
            groups.setdefault((y % spacing, x % spacing), []).append((y, x))
    return dict(sorted(groups.items()))


def _groups(origins: list[int], spacing: int) -> int:
    return len({o % spacing for o in origins})


def _allot(sizes: list[int], total: int) -> list[tuple[int, int]]:
    """(size, masks) per group: `total` masks shared among groups of positions, at least one
    each, each further mask to the group whose masks hold the most patches (so the largest mask
    is as small as it can be)."""
    counts = [1] * len(sizes)
    heap = [(-s, i) for i, s in enumerate(sizes)]
    heapq.heapify(heap)
    for _ in range(total - len(sizes)):
        _, i = heapq.heappop(heap)
        counts[i] += 1
        if counts[i] < sizes[i]:
            heapq.heappush(heap, (-sizes[i] / counts[i], i))
    return list(zip(sizes, counts, strict=True))


def pack_masks(
    height: int,
    width: int,
    patch: int,
    stride: int,
    spacing: int,
    per_mask: int | None = None,
    n_masks: int | None = None,
) -> MaskPacking:
    """Pack the patch positions into masks whose patch origins are at least `spacing` apart
    (Chebyshev): positions are grouped by origin modulo `spacing` and each group is dealt
    round-robin into its masks, as few as hold `per_mask` patches each, or `n_masks` in all
    shared among the groups in proportion to their sizes."""
    groups = _grouped(_origins(height, patch, stride), _origins(width, patch, stride), spacing)
    sizes = [len(g) for g in groups.values()]
    if n_masks is None:
        counts = [(s, math.ceil(s / per_mask)) for s in sizes]
    else:
        counts = _allot(sizes, n_masks)
    masks = []
    for members, (_, chunks) in zip(groups.values(), counts, strict=True):
        for c in range(chunks):
            m = torch.zeros(height, width, dtype=torch.bool)
            for y, x in members[c::chunks]:
                m[y : y + patch, x : x + patch] = True
            masks.append(m)
    masks_t = torch.stack(masks)
    flat = masks_t.flatten(1)
    size = int(flat.sum(1).max())
    index = torch.full((len(masks), size), height * width, dtype=torch.long)
    for i, row in enumerate(flat):
        idx = torch.nonzero(row).flatten()
        index[i, : len(idx)] = idx
    return MaskPacking(masks_t, index)


def masks_for(model: PixelModel, config: DecoyConfig) -> MaskPacking:
    """The mask plan of a resolved config on `model`'s input size."""
    _, h, w = grid_shape(model.input_shape)
    return pack_masks(
        h, w, config.patch, config.stride, config.spacing, config.per_mask, config.n_masks
    )


@dataclass
class Decoys:
    """A decoy population: (B, K, C, H, W) and per decoy its mask and sign (0 for the proxies),
    and per image and decoy the diagnostics."""

    population: Tensor
    mask_index: Tensor
    sign: Tensor
    success: Tensor
    rep_diff: Tensor
    mean_shift: Tensor
    lam: Tensor
    passes: Tensor  # forward+backward passes to the layer spent on each decoy

    def diagnostics(self) -> dict[str, Tensor]:
        return {
            "success": self.success,
            "representation_difference": self.rep_diff,
            "mean_abs_shift": self.mean_shift,
            "lambda": self.lam,
        }


def members(generator: str, n_masks: int) -> tuple[Tensor, Tensor]:
    """Per decoy of a population, its mask and its sign: two per mask (s = +1, -1) for the
    optimised decoys, one with sign 0 for the proxies."""
    if generator == "dance":
        return torch.arange(n_masks).repeat_interleave(2), torch.tensor([1.0, -1.0]).repeat(n_masks)
    return torch.arange(n_masks), torch.zeros(n_masks)


def population_size(model: PixelModel, config: DecoyConfig) -> int:
    """Members of a kept population: the original and every decoy."""
    return 1 + len(members(config.generator, masks_for(model, config).n)[0])


def make_decoys(
    model: PixelModel, x: Tensor, config: DecoyConfig, ctx: Context | None = None
) -> Decoys:
    """The decoys of every sample of x under a resolved `config`, all optimised together
    (tables and texts on their grid of positions, the population returned in x's shape)."""
    ctx = ctx or Context()
    if model.kind != "image":
        found = make_decoys(on_grid(model), to_grid(x), config, ctx)
        found.population = from_grid(found.population, model.input_shape)
        return found
    plan = masks_for(model, config)
    plan = MaskPacking(plan.masks.to(x.device), plan.index.to(x.device))
    mask_index, sign = (t.to(x.device) for t in members(config.generator, plan.n))
    if config.generator == "dance":
        population, lam, success, passes = _optimise(model, x, plan, mask_index, sign, config, ctx)
    else:
        population = _proxy(model, x, plan, config, ctx)
        lam = torch.full(population.shape[:2], float("nan"), device=x.device)
        success, passes = None, torch.zeros(population.shape[:2], dtype=torch.long)
    rep_diff = representation_difference(model, config.layer, x, population, ctx.micro_batch)
    region = plan.masks[mask_index][None, :, None]  # (1, K, 1, H, W)
    shift = ((population - x[:, None]).abs() * region).sum(dim=(2, 3, 4))
    mean_shift = shift / (region.sum(dim=(2, 3, 4)) * x.shape[1])
    if success is None:
        success = rep_diff <= config.eps
    return Decoys(population, mask_index, sign, success, rep_diff, mean_shift, lam, passes)


def representation_difference(
    model: PixelModel, layer: str, x: Tensor, population: Tensor, micro_batch: int
) -> Tensor:
    """max |F_l(x~) - F_l(x)| / max |F_l(x)| per image and decoy (B, K)."""
    with torch.no_grad():
        ref = forward_to(model, layer, x)
        scale = ref.flatten(1).abs().amax(1).clamp_min(1e-12)
        b, k = population.shape[:2]
        flat = population.flatten(0, 1)
        out = torch.empty(b * k, device=x.device)
        for s in range(0, b * k, micro_batch):
            rows = torch.arange(s, min(s + micro_batch, b * k), device=x.device)
            f = forward_to(model, layer, flat[rows])
            out[rows] = (f - ref[rows // k]).flatten(1).abs().amax(1) / scale[rows // k]
    return out.view(b, k)


def _proxy(model: PixelModel, x: Tensor, plan: MaskPacking, config: DecoyConfig, ctx: Context):
    """One decoy per mask: the mask filled with a box blur, the image's mean colour, or x plus
    Gaussian noise (clipped to the range)."""
    lo, hi = model.value_range
    if config.generator == "blur":
        k = config.blur_size
        fill = F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)[:, None]
    elif config.generator == "constant" and isinstance(model, OnGrid):
        fill = model.baseline_colour.expand(1, *x.shape[1:])[:, None]  # the data's mean
    elif config.generator == "constant":
        fill = x.mean(dim=(2, 3), keepdim=True)[:, None].expand(-1, plan.n, -1, *x.shape[2:])
    else:
        keys = [f"{key}/decoy-noise/{j}" for key in ctx.keys_for(len(x)) for j in range(plan.n)]
        noise = keyed_normal(keys, tuple(x.shape[1:]), x.device).view(len(x), plan.n, *x.shape[1:])
        fill = (x[:, None] + config.noise_sigma * (hi - lo) * noise).clamp(lo, hi)
    return torch.where(plan.masks[None, :, None], fill, x[:, None])


_STATE = ("order", "value", "origin", "feasible", "m1", "m2", "steps", "rounds", "lam", "tau")


class _Pool:
    """The working set of one image's decoys: tanh variables on the masked pixels (R, C, L)
    and, per row, Adam moments and steps, lambda, relative tau, rounds and the last feasible
    variables; `order` maps rows to decoy ids. Rows join as others finish."""

    def __init__(self, like: Tensor):
        for name in _STATE:
            setattr(self, name, like.new_empty((0,)))
        self.order = self.steps = self.rounds = like.new_empty((0,), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.order)

    def join(self, start: Tensor, ids: Tensor, lambda0: float) -> None:
        """Add decoys `ids` whose masked pixels, as a fraction of the range, are `start`."""
        value = torch.atanh(2 * start.clamp(INIT_CLAMP, 1 - INIT_CLAMP) - 1)
        zeros = torch.zeros(len(ids), dtype=torch.long, device=ids.device)
        new = {
            "order": ids,
            "value": value,
            "origin": (torch.tanh(value) + 1) / 2,  # x as the variables express it
            "feasible": value,
            "m1": torch.zeros_like(value),
            "m2": torch.zeros_like(value),
            "steps": zeros,
            "rounds": zeros,
            "lam": torch.full((len(ids),), lambda0, device=ids.device),
            "tau": torch.ones(len(ids), device=ids.device),
        }
        for name in _STATE:
            old = getattr(self, name)
            setattr(self, name, torch.cat([old.view(-1, *new[name].shape[1:]), new[name]]))

    def keep(self, rows: Tensor) -> None:
        for name in _STATE:
            setattr(self, name, getattr(self, name)[rows])


@dataclass
class _Result:
    """Per decoy (K) of one image: final variables, lambda, success and passes."""

    value: Tensor
    lam: Tensor
    success: Tensor
    passes: Tensor


def _optimise(
    model: PixelModel,
    x: Tensor,
    plan: MaskPacking,
    mask_index: Tensor,
    sign: Tensor,
    config: DecoyConfig,
    ctx: Context,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Optimise all decoys of all images (ICLR A6 / preprint eq. 4-5): minimise
    -||((x~ - x) s)^+||_1 + lambda ||(|F_l(x~) - F_l(x)| - tau)^+||_2^2 over tanh variables.

    An image's decoys stream through a working set of `micro_batch` rows, a finished row's
    place taken at once by the next, so micro-batches stay full. Images do not share a working
    set: a decoy's trajectory, with its discrete round decisions, then depends on its image
    alone, not on which other images share the call. Returns the population (B, K, C, H, W) and
    per decoy (B, K) the final lambda, success and passes spent.
    """
    lo, hi = model.value_range
    b, c, h, w = x.shape
    k = len(mask_index)
    index = plan.index[mask_index]  # (K, L), padded with the dropped slot h * w
    x_pad = F.pad(x.flatten(2), (0, 1))  # (B, C, HW + 1)
    results = []
    for i in range(b):
        with torch.no_grad():  # image by image: a batch's float noise must not move a decision
            ref = forward_to(model, config.layer, x[i : i + 1])
        result = _Result(
            torch.empty(k, c, index.shape[1], device=x.device),
            torch.empty(k, device=x.device),
            torch.zeros(k, dtype=torch.bool, device=x.device),
            torch.zeros(k, dtype=torch.long, device=x.device),
        )
        pool, queue = _Pool(x), torch.arange(k, device=x.device)
        while len(pool) or len(queue):
            ids, queue = queue[: ctx.micro_batch - len(pool)], queue[ctx.micro_batch - len(pool) :]
            if len(ids):
                pool.join(
                    (x_pad[i][:, index[ids]].transpose(0, 1) - lo) / (hi - lo), ids, config.lambda0
                )
            _step(model, config, pool, result, x_pad[i : i + 1], ref, index, sign, (lo, hi), (h, w))
        results.append(result)
    value = torch.stack([r.value for r in results]).flatten(0, 1)
    base = x_pad.repeat_interleave(k, 0)
    population = _images(_pixels(value, (lo, hi)), base, index.repeat(b, 1), (h, w))
    return (
        population.view(b, k, c, h, w),
        torch.stack([r.lam for r in results]),
        torch.stack([r.success for r in results]),
        torch.stack([r.passes for r in results]),
    )


def _pixels(value: Tensor, value_range) -> Tensor:
    """Pixel values of tanh variables: x_min + (x_max - x_min) (tanh(v) + 1) / 2."""
    lo, hi = value_range
    return lo + (hi - lo) * (torch.tanh(value) + 1) / 2


def _images(pix: Tensor, base: Tensor, index: Tensor, size) -> Tensor:
    """Dense decoys (R, C, H, W): `base` (R or 1, C, HW + 1) with the masked pixels (R, C, L)
    set at `index` (R, L); padded entries land in the dropped last slot."""
    rows, c = pix.shape[:2]
    dense = base.expand(rows, -1, -1).scatter(2, index[:, None].expand(-1, c, -1), pix)
    return dense[:, :, :-1].view(rows, c, *size)


def _step(model, config, pool, result, base, ref, index, sign, value_range, size) -> None:
    """One optimiser step for every row of the pool; a row at a round boundary first settles
    the round, and rows that succeed or spend their rounds leave with their last feasible
    variables."""
    dims = tuple(range(1, ref.ndim))  # reduce without flattening: keeps channels_last
    scale = ref.abs().amax().clamp_min(1e-12)
    lo, hi = value_range
    ids = pool.order
    value = pool.value.requires_grad_(True)
    with torch.enable_grad():
        unit = (torch.tanh(value) + 1) / 2
        decoys = _images(lo + (hi - lo) * unit, base, index[ids], size)
        rep = forward_to(model, config.layer, decoys)
        gap = (rep - ref).abs()
        worst = gap.detach().amax(dims) / scale
        boundary = (pool.steps > 0) & (pool.steps % config.steps_per_round == 0)
        feasible = boundary & (worst <= pool.tau)
        done = feasible & (pool.tau <= config.eps * (1 + 1e-6))
        pool.feasible = torch.where(feasible.view(-1, 1, 1), value.detach(), pool.feasible)
        pool.tau = torch.where(feasible & ~done, pool.tau * config.tau_decay, pool.tau)
        failed = boundary & ~feasible
        pool.lam = torch.where(failed, (pool.lam * 2).clamp_max(MAX_LAMBDA), pool.lam)
        pool.rounds = pool.rounds + boundary.long()
        finished = done | (pool.rounds >= config.max_rounds)

        gain = (unit - pool.origin) * sign[ids].view(-1, 1, 1)
        # ((x~ - x) s)^+ with the outward one-sided gradient at 0, where every decoy starts
        gain = gain * (gain >= 0)
        reward = (gain * (index[ids] < base.shape[2] - 1)[:, None]).sum()
        excess = (gap - (pool.tau * scale).view(-1, *[1] * len(dims))).clamp_min(0)
        penalty = (pool.lam / scale**2 * excess.square().sum(dims)).sum()
        (grad,) = torch.autograd.grad(penalty - reward, value)
    pool.value, pool.m1, pool.m2, pool.steps = adam(
        value.detach(), grad, pool.m1, pool.m2, pool.steps, config.lr, ~finished
    )
    if finished.any():
        out = ids[finished]
        result.value[out] = pool.feasible[finished]
        result.lam[out] = pool.lam[finished]
        result.success[out] = done[finished]
        result.passes[out] = pool.steps[finished] + 1  # the updates and the final check
        pool.keep(~finished)


def decoy_saliency(
    base: Callable[..., Tensor],
    model: PixelModel,
    x: Tensor,
    target: Tensor,
    decoys: Decoys,
    ctx: Context | None = None,
) -> Tensor:
    """The base method's maps of the population with the original first: (B, K + 1, C, H, W)."""
    ctx = ctx or Context()
    b, k = decoys.population.shape[:2]
    rows = torch.cat([x[:, None], decoys.population], 1).flatten(0, 1)
    keys = [f"{key}/decoy{j}" for key in ctx.keys_for(b) for j in range(k + 1)]
    maps = base(model, rows, target.repeat_interleave(k + 1), ctx.with_keys(keys))
    return maps.view(b, k + 1, *x.shape[1:])


def aggregate(maps: Tensor, how: str) -> Tensor:
    """Per feature over the population (dim 1): range (max - min) or mean."""
    if how == "range":
        return maps.amax(1) - maps.amin(1)
    if how == "mean":
        return maps.mean(1)
    raise SalauditError(f"unknown decoy aggregation {how!r}; valid: range, mean")
