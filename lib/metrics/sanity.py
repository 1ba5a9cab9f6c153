"""The sanity check (Adebayo et al. 2018; DANCE A11): maps of a model whose layers are
re-initialised cascading from the top, compared with the original maps by SSIM and Spearman."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.keys import seed_of
from ..errors import SalauditError
from ..inputs.models import PixelModel
from .catalogue import Cell, Family, Section, Variable, register
from .masks import as_maps, check_same, check_target, quantile, saliency_mask
from .robustness import spearman

# explain(model, x, target) -> map of x's shape
Explain = Callable[[nn.Module, Tensor, Tensor], Tensor]


def _planes(a: Tensor) -> Tensor:
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise SalauditError(f"ssim takes 2-D maps (B, H, W) or (B, 1, H, W), got {tuple(a.shape)}")
    return a.double()


def ssim(
    a: Tensor, b: Tensor, data_range: float | Tensor | None = None, win_size: int = 7
) -> Tensor:
    """Mean SSIM (B,) of 2-D maps, as skimage.metrics.structural_similarity with its defaults
    (uniform win_size x win_size window, K1 = 0.01, K2 = 0.03, sample covariance, the mean over
    the region (win_size - 1) // 2 away from the border). `data_range` None: per sample
    max(a, b) - min(a, b) over both maps (Quantus' convention); identical constant maps give 1.
    """
    check_same(a, b, "ssim")
    x, y = _planes(a), _planes(b)
    if win_size < 3 or win_size % 2 == 0 or win_size > min(x.shape[1:]):
        raise SalauditError(
            f"win_size must be odd, at least 3 and at most the maps' side {min(x.shape[1:])}, "
            f"got {win_size}"
        )
    if data_range is None:
        hi = torch.maximum(x.flatten(1).amax(1), y.flatten(1).amax(1))
        rng = hi - torch.minimum(x.flatten(1).amin(1), y.flatten(1).amin(1))
    else:
        rng = torch.as_tensor(data_range, dtype=torch.float64, device=x.device).expand(len(x))
    c1 = ((0.01 * rng) ** 2).view(-1, 1, 1)
    c2 = ((0.03 * rng) ** 2).view(-1, 1, 1)
    stats = F.avg_pool2d(torch.stack([x, y, x * x, y * y, x * y], 1), win_size, stride=1)
    ux, uy, uxx, uyy, uxy = stats.unbind(1)
    cov = win_size**2 / (win_size**2 - 1)
    vx, vy, vxy = cov * (uxx - ux * ux), cov * (uyy - uy * uy), cov * (uxy - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    out = s.mean((1, 2))
    return torch.where(rng == 0, (x == y).flatten(1).all(1).double(), out).to(a.dtype)


def _unit_range(v: Tensor) -> Tensor:
    """Min-max rescaling of each sample's map to [0, 1] (a constant map becomes 0)."""
    flat = v.flatten(1)
    lo, hi = flat.amin(1), flat.amax(1)
    span = (hi - lo).view(-1, *[1] * (v.ndim - 1))
    lo = lo.view_as(span)
    return torch.where(span > 0, (v - lo) / torch.where(span > 0, span, 1.0), 0.0)


def sanity_views(e: Tensor) -> dict[str, Tensor]:
    """The per-sample 2-D views of a map (B, H, W) the sanity check compares (Adebayo et al.
    2018, their released notebooks): "abs" channel-summed |E| clipped at its 99th percentile
    (their grayscale view; equal to `saliency_mask`); "signed" channel-summed E divided by the
    99th percentile of its |.| and clipped to [-1, 1] (their diverging view, made symmetric);
    "unit" channel-summed |E| min-max rescaled to [0, 1] (their 0-1 normalisation, the view DANCE
    fig. A5 shows), the input of SSIM."""
    e = as_maps(e)
    signed = e.sum(1)
    q = quantile(signed.abs().flatten(1), 0.99).view(-1, 1, 1)
    signed = torch.where(q > 0, (signed / torch.where(q > 0, q, 1.0)).clamp(-1, 1), 0.0)
    return {
        "abs": saliency_mask(e)[:, 0],
        "signed": signed,
        "unit": _unit_range(e.abs().sum(1)),
    }


def cascade_layers(net: nn.Module) -> list[str]:
    """The layers the cascade re-initialises, top (output) first: the modules of `net` with
    parameters of their own and a `reset_parameters` method, in reverse definition order."""
    return [
        name
        for name, m in reversed(list(net.named_modules()))
        if name and hasattr(m, "reset_parameters") and any(True for _ in m.parameters(False))
    ]


def _reinitialise(module: nn.Module, seed: int) -> None:
    """Re-initialise a layer with `reset_parameters()` on a CPU copy under a seeded CPU
    generator (the same weights on any device); BatchNorm's running statistics are reset too
    (mean 0, variance 1), as in a freshly built network."""
    fresh = copy.deepcopy(module).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh.reset_parameters()
    module.load_state_dict(fresh.state_dict())


def cascading_randomisation(
    model: PixelModel,
    explain: Explain,
    x: Tensor,
    target: Tensor,
    layers: list[str] | None = None,
    seed: int = 0,
) -> dict:
    """Adebayo et al.'s cascading model-parameter randomisation (DANCE A11) on a copy of the
    model (the caller's stays untouched, in eval mode throughout): layers are re-initialised
    one by one from the top (`cascade_layers`, or the given module paths of `model.net` in the
    given order), and after each the map `explain(model, x, target)` is compared with the
    original one per sample: "ssim" (data range 1) of the "unit" views, "spearman" of the
    "signed" views and "spearman_abs" of the "abs" views (`sanity_views`), each (B, L)."""
    check_target(x, target)
    rand = copy.deepcopy(model).eval()
    net = getattr(rand, "net", rand)
    names = cascade_layers(net) if layers is None else list(layers)
    modules = {name: _cascade_module(net, name) for name in names}
    ref = sanity_views(explain(rand, x, target))
    out: dict[str, list[Tensor]] = {"ssim": [], "spearman": [], "spearman_abs": []}
    for name in names:
        _reinitialise(modules[name], seed_of(f"cascade/{seed}/{name}"))
        views = sanity_views(explain(rand, x, target))
        out["ssim"].append(ssim(ref["unit"], views["unit"], data_range=1.0))
        out["spearman"].append(spearman(ref["signed"], views["signed"]))
        out["spearman_abs"].append(spearman(ref["abs"], views["abs"]))
    empty = torch.empty(len(x), 0, device=x.device)
    return {"layers": names} | {k: torch.stack(v, 1) if v else empty for k, v in out.items()}


def _cascade_module(net: nn.Module, name: str) -> nn.Module:
    try:
        module = net.get_submodule(name)
    except AttributeError:
        raise SalauditError(
            f"layer {name!r} is not in the model; re-initialisable layers: "
            f"{', '.join(cascade_layers(net))}"
        ) from None
    if not hasattr(module, "reset_parameters"):
        raise SalauditError(f"layer {name!r} ({type(module).__name__}) has no reset_parameters")
    return module


def _sanity(cell: Cell) -> dict[str, Tensor]:
    out = cascading_randomisation(
        cell.model,
        lambda model, x, t: cell.method(model, x, t, cell.context),
        cell.x,
        cell.target,
        seed=cell.seed,
    )
    return {f"sanity_{k}": out[k] for k in ("ssim", "spearman", "spearman_abs")}


register(
    Family(
        "sanity",
        (
            Variable("sanity_ssim", "Sanity check: SSIM with the randomised model's maps", False),
            Variable(
                "sanity_spearman", "Sanity check: Spearman with the randomised model's maps", False
            ),
            Variable(
                "sanity_spearman_abs",
                "Sanity check: Spearman of |maps| with the randomised model's",
                False,
            ),
        ),
        _sanity,
        dim="layer",
        labels=lambda model: cascade_layers(model.net),
        section=Section.SANITY,
        kinds=("image",),  # SSIM compares 2-D maps
        default=False,  # recomputes every map once per layer: asked for by name (or `all`)
    )
)
