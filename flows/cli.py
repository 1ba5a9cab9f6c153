"""The `salaudit` command line."""

from __future__ import annotations

import argparse
import ast
import sys

DEFAULT_MODEL = "builtin:digit-scenes-cnn"
DEFAULT_DATA = "builtin:digit-scenes"
DEFAULT_METHODS = "grad,ig,smoothgrad,dance-grad,blur-grad"
DEFAULT_STORE = "runs/explain"
DEFAULT_ATTACKS = "topk@grad,mass-center@grad,target@grad,pgd"


def _settings(items: list[str], what: str) -> dict[str, dict]:
    """`name.key=value` items -> {name: {key: value}}, values as Python literals."""
    out: dict[str, dict] = {}
    for item in items:
        head, sep, raw = item.partition("=")
        name, dot, key = head.partition(".")
        if not (sep and dot and name and key):
            raise SystemExit(f"salaudit: error: bad {what} {item!r}; write NAME.KEY=VALUE")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out.setdefault(name, {})[key] = value
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="salaudit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("explain", help="compute saliency maps of a data set into a store")
    e.add_argument("--model", default=DEFAULT_MODEL, help=f"model spec (default {DEFAULT_MODEL})")
    e.add_argument("--data", default=DEFAULT_DATA, help=f"data spec (default {DEFAULT_DATA})")
    e.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated method names")
    e.add_argument("--limit", type=int, default=16, help="number of samples (default 16)")
    e.add_argument(
        "--select",
        default="random",
        help="first | random | stratified | correct, or MODE+correct (default random)",
    )
    e.add_argument("--store", default=DEFAULT_STORE, help="local path or s3:// URL")
    e.add_argument("--keep-decoys", action="store_true", help="store decoy populations")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--fresh", action="store_true", help="delete the store's contents first")
    e.add_argument("--shard-size", type=int, default=16, help="samples per region and chunk")
    e.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="a base method parameter, e.g. ig.n_steps=20 (repeatable)",
    )
    e.add_argument(
        "--decoy",
        action="append",
        default=[],
        metavar="GENERATOR.KEY=VALUE",
        help="a decoy setting, e.g. dance.eps=0.05 or dance.stride=3 (repeatable)",
    )
    e.add_argument(
        "--boundary",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a boundary-search setting for bsm and big, e.g. finders=pgd,cw or radii=1,2,4 "
        "(repeatable)",
    )

    a = sub.add_parser("attack", help="attack a store's images and recompute its maps on them")
    a.add_argument("--store", default=DEFAULT_STORE, help="the store of an explain run")
    a.add_argument(
        "--attacks",
        default=DEFAULT_ATTACKS,
        help=f"comma-separated ATTACK@METHOD and pgd (default {DEFAULT_ATTACKS})",
    )
    a.add_argument(
        "--radii",
        default=None,
        help="pgd's L_inf radii in units of 1/255 of the range (default 1,2,4,8,16,32)",
    )
    a.add_argument(
        "--methods",
        default=None,
        help="the maps to recompute on attacked images (default: every method in the store)",
    )
    a.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="ATTACK.KEY=VALUE",
        help="an attack parameter, e.g. topk.steps=100 or pgd.steps=20 (repeatable)",
    )

    v = sub.add_parser("evaluate", help="score a store's maps and attacks; statistics")
    v.add_argument("--store", default=DEFAULT_STORE, help="the store of an explain run")
    v.add_argument(
        "--metrics",
        default=None,
        help="comma-separated metric families (default: every applicable one but sanity; "
        "`all` adds sanity)",
    )

    for stage in (e, a, v):
        stage.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
        stage.add_argument("--quiet", action="store_true", help="no progress bars")

    s = sub.add_parser("show", help="save one sample's image and maps as a PNG")
    s.add_argument("--store", default=DEFAULT_STORE)
    s.add_argument("--sample", type=int, required=True, help="dataset index of the sample")
    s.add_argument("--out", required=True, help="PNG file to write")
    return p


def _explain(args: argparse.Namespace) -> None:
    from salaudit.explain import ExplainConfig, explain
    from salaudit.selection import Selection

    config = ExplainConfig(
        model=args.model,
        data=args.data,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        store=args.store,
        selection=Selection.parse(args.select, args.limit, args.seed),
        keep_decoys=args.keep_decoys,
        device=args.device,
        seed=args.seed,
        fresh=args.fresh,
        shard_size=args.shard_size,
        method_params=_settings(args.param, "--param"),
        decoy_params=_settings(args.decoy, "--decoy"),
        boundary_params=_settings([f"boundary.{b}" for b in args.boundary], "--boundary").get(
            "boundary", {}
        ),
    )
    out = explain(config, progress=not args.quiet)
    print(
        f"salaudit: {out['samples']} samples x {len(out['methods'])} methods "
        f"({', '.join(out['methods'])}) on {out['device']}; {out['computed']} map regions "
        f"computed, the rest were already in the store"
    )
    if "boundary_failed" in out:
        print(
            f"salaudit: boundary search found no adversarial point for "
            f"{out['boundary_failed']} of {out['samples']} samples "
            f"({out['boundary_failed'] / out['samples']:.1%}); their bsm and big maps are "
            "empty (NaN)"
        )
    print(
        f"salaudit: results in {out['store']}  (read with "
        f"xarray.open_datatree({out['store']!r}, engine='zarr'))"
    )
    print(
        f"salaudit: picture of a sample: salaudit show --store {out['store']} --sample "
        f"<index> --out sample.png"
    )


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def _attack(args: argparse.Namespace) -> None:
    from salaudit.attack_stage import attack

    radii = [float(r) for r in _names(args.radii)] if args.radii else None
    out = attack(
        args.store,
        _names(args.attacks),
        params=_settings(args.param, "--param"),
        radii=radii,
        methods=_names(args.methods),
        device=args.device,
        progress=not args.quiet,
    )
    print(
        f"salaudit: {out['samples']} samples, maps of {', '.join(out['methods'])} recomputed on "
        f"attacked images; {out['computed']} parts computed, the rest were already in the store"
    )
    for name, share in out["attacks"].items():
        if isinstance(share, list):
            text = ", ".join(f"{s:.0%}" for s in share)
            print(f"salaudit: {name} success by radius: {text}")
        else:
            print(f"salaudit: {name} success: {share:.0%}")
    print(
        f"salaudit: results in {out['store']}/attacks; "
        f"next: salaudit evaluate --store {out['store']}"
    )


def _evaluate(args: argparse.Namespace) -> None:
    from salaudit.evaluate import evaluate

    out = evaluate(args.store, _names(args.metrics), device=args.device, progress=not args.quiet)
    print(
        f"salaudit: {out['samples']} samples; {out['computed']} metric parts computed, the rest "
        "were already in the store"
    )
    for note in out["notes"]:
        print(f"salaudit: {note}")
    print(out["table"])
    print(f"salaudit: metrics and statistics in {out['store']}/metrics and {out['store']}/stats")


def _show(args: argparse.Namespace) -> None:
    from salaudit.display import show_sample

    names = show_sample(args.store, args.sample, args.out)
    print(f"salaudit: wrote {args.out} (image and {len(names)} maps: {', '.join(names)})")


def main(argv: list[str] | None = None) -> int:
    from salaudit.errors import SalauditError

    args = _parser().parse_args(argv)
    try:
        {"explain": _explain, "attack": _attack, "evaluate": _evaluate, "show": _show}[
            args.command
        ](args)
    except SalauditError as e:
        print(f"salaudit: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
