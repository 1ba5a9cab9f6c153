"""The `salaudit` command line."""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time

from salaudit.errors import SalauditError
from salaudit.metrics.masks import METRIC_BASELINES
from salaudit.pipeline.spec import AuditSpec

DEFAULTS = AuditSpec()  # every flag's default is the spec's


PRECISION_CHOICES = ("fp32", "bf16", "fp16")
PRECISION_HELP = (
    "the model's forward under autocast in bf16 or fp16 (gradients and sums stay fp32); "
    f"default {DEFAULTS.precision}"
)


def _settings(items: list[str], what: str) -> dict[str, dict]:
    """`name.key=value` items -> {name: {key: value}}, values as Python literals."""
    out: dict[str, dict] = {}
    for item in items:
        head, sep, raw = item.partition("=")
        name, dot, key = head.partition(".")
        if not (sep and dot and name and key):
            raise SalauditError(f"bad {what} {item!r}; write NAME.KEY=VALUE")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out.setdefault(name, {})[key] = value
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="salaudit", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser
    sub.add_parser = lambda *a, **k: add(*a, parents=[common], **k)  # every command: --debug

    e = sub.add_parser("explain", help="compute saliency maps of a data set into a store")
    e.add_argument("--model", help=f"model spec (default {DEFAULTS.model})")
    e.add_argument("--data", help=f"data spec (default {DEFAULTS.data})")
    e.add_argument(
        "--methods",
        help="comma-separated method names (default the default audit's: "
        f"{','.join(DEFAULTS.methods)}, with its parameters and decoy settings)",
    )
    e.add_argument("--limit", type=int, help=f"number of samples (default {DEFAULTS.selection.n})")
    e.add_argument(
        "--select",
        help="first | random | stratified | correct, or MODE+correct (default "
        f"{DEFAULTS.selection.mode})",
    )
    e.add_argument("--store", help=f"local path or s3:// URL (default {DEFAULTS.store.url})")
    e.add_argument("--keep-decoys", action="store_true", help="store decoy populations")
    e.add_argument("--precision", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    e.add_argument("--seed", type=int, help=f"default {DEFAULTS.seed}")
    e.add_argument("--fresh", action="store_true", help="delete the store's contents first")
    e.add_argument(
        "--shard-size",
        type=int,
        help=f"samples per region and chunk (default {DEFAULTS.shard_size})",
    )
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
    a.add_argument("--store", default=DEFAULTS.store.url, help="the store of an explain run")
    a.add_argument(
        "--attacks",
        help="comma-separated ATTACK@METHOD and pgd (default the default audit's: "
        f"{','.join(DEFAULTS.attacks)}, with its parameters and radii)",
    )
    a.add_argument(
        "--radii",
        default=None,
        help="pgd's L_inf radii in units of 1/255 of the range (default: the attacks' own)",
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
    v.add_argument("--store", default=DEFAULTS.store.url, help="the store of an explain run")
    v.add_argument(
        "--metrics",
        default=None,
        help="comma-separated metric families (default: every applicable one but sanity; "
        "`all` adds sanity)",
    )
    v.add_argument(
        "--baseline",
        choices=METRIC_BASELINES,
        default=None,
        help="what replaces removed pixels in fidelity, deletion and retrieval: the data's mean "
        "colour, zero or a blur of the image (default: the store's metrics' own, else mean)",
    )

    for stage in (e, a, v):
        stage.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
        stage.add_argument("--quiet", action="store_true", help="no progress bars")

    u = sub.add_parser(
        "audit",
        help="the main job: an audit of a spec through Prefect and Dask (default: the "
        "embedded default spec into ./runs/audit)",
    )
    u.add_argument("spec", nargs="?", help="audit spec (YAML; salaudit init writes one)")
    u.add_argument("--store", help="override the spec's store URL")
    u.add_argument("--limit", type=int, help="audit only the first N selected samples")
    u.add_argument("--cluster", help="auto | local | cuda | tcp://SCHEDULER:PORT")
    u.add_argument("--workers", type=int, help="worker processes of a local cluster")
    u.add_argument("--precision", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    u.add_argument("--fresh", action="store_true", help="delete the store's contents first")
    u.add_argument("--quiet", action="store_true", help="no progress bar")
    u.add_argument("--verbose", action="store_true", help="Prefect's and Dask's logs too")

    i = sub.add_parser("init", help="write the default audit spec, commented, to start from")
    i.add_argument("path", nargs="?", default="salaudit.yaml")
    i.add_argument(
        "--kind",
        choices=("image", "tabular", "text"),
        default="image",
        help="the embedded default to start from: images (digit scenes), a table or text",
    )
    i.add_argument("--force", action="store_true", help="overwrite an existing file")

    n = sub.add_parser("plan", help="print what an audit will do, without running it")
    n.add_argument("spec", nargs="?", help="audit spec (YAML; default: the embedded default)")
    n.add_argument("--limit", type=int, help="as salaudit audit --limit")
    n.add_argument(
        "--samples",
        type=int,
        help="estimate for this many samples (default: the spec's selection of its data), "
        "calibrated on the spec's data",
    )

    r = sub.add_parser("report", help="write a store's HTML report (tables, statistics, figures)")
    r.add_argument(
        "--store", default=DEFAULTS.store.url, help="local path or s3:// URL of the store"
    )
    r.add_argument("--out", help="folder or s3:// URL for the report (default: <store>-report)")

    c = sub.add_parser(
        "compare",
        help="compare two audits of one data selection (baseline, current); exit 1 on a "
        "regression beyond a threshold",
    )
    c.add_argument("baseline", help="the earlier audit's store (path or s3:// URL)")
    c.add_argument("current", help="the later audit's store")
    c.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="METRIC=MAX_WORSENING",
        help="gate a metric: the largest tolerated worsening of a method's mean (repeatable; "
        "added to the spec's compare.thresholds)",
    )
    c.add_argument("--alpha", type=float, help="significance level (default: the spec's, 0.05)")
    c.add_argument("--spec", help="an audit spec whose compare: thresholds and alpha to use")

    d = sub.add_parser("deploy", help="create a Prefect deployment of an audit spec")
    d.add_argument("spec", nargs="?", help="audit spec (YAML; default: the embedded default)")
    d.add_argument("--name", required=True, help="the deployment's name")
    d.add_argument("--cron", help='a cron schedule, e.g. "0 2 * * *" (none: runs on demand)')
    d.add_argument(
        "--pool",
        default="salaudit-gpu",
        help="work pool (created as a process pool if missing; default salaudit-gpu)",
    )
    d.add_argument(
        "--watch",
        metavar="PREFIX",
        help="also audit each new checkpoint under this folder or s3:// prefix (the spec's "
        "{checkpoint} and {checkpoint_name} name it)",
    )
    d.add_argument("--every", type=float, default=60, help="seconds between looks (default 60)")
    d.add_argument("--pattern", default="*.pt", help="checkpoint file names (default *.pt)")

    v2 = sub.add_parser("serve", help="run an audit spec on a schedule from this process")
    v2.add_argument("spec", nargs="?", help="audit spec (YAML; default: the embedded default)")
    v2.add_argument("--name", default="salaudit", help="the deployment's name")
    v2.add_argument("--cron", help='a cron schedule, e.g. "0 2 * * *"')

    y = sub.add_parser(
        "verify",
        help="check a store against its done-markers; --repair recomputes the damaged "
        "regions and what read them (exit 1 when damage is found and not repaired)",
    )
    y.add_argument("store", help="the store (path or s3:// URL)")
    y.add_argument("--repair", action="store_true", help="recompute what is damaged")
    y.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    y.add_argument("--quiet", action="store_true", help="no progress bars")

    s = sub.add_parser("show", help="save one sample's image and maps as a PNG")
    s.add_argument("--store", default=DEFAULTS.store.url)
    s.add_argument("--sample", type=int, required=True, help="dataset index of the sample")
    s.add_argument("--out", required=True, help="PNG file to write")
    return p


def _explain_spec(args: argparse.Namespace) -> AuditSpec:
    """The spec the explain flags say: the default audit's fields where a flag is not given."""
    from salaudit.inputs.selection import Selection
    from salaudit.pipeline.spec import parse_spec

    data = DEFAULTS.model_dump(mode="json")
    given = {"model": args.model, "data": args.data, "seed": args.seed}
    data |= {k: v for k, v in given.items() if v is not None}
    if args.shard_size is not None:
        data["shard_size"] = args.shard_size
    data["keep_decoys"] = args.keep_decoys
    if args.precision:
        data["precision"] = args.precision
    data["device"] = args.device
    if args.store:
        data["store"]["url"] = args.store
    if args.limit is not None or args.select:
        chosen = Selection.parse(args.select or DEFAULTS.selection.mode, args.limit)
        n = args.limit if args.limit is not None else DEFAULTS.selection.n
        data["selection"] = {"mode": chosen.mode, "n": n, "correct_only": chosen.correct_only}
    params, decoys = _settings(args.param, "--param"), _settings(args.decoy, "--decoy")
    boundary = _settings([f"boundary.{b}" for b in args.boundary], "--boundary").get("boundary")
    if args.methods:  # own methods: only the settings the flags give
        data["methods"] = {m.strip(): {} for m in args.methods.split(",") if m.strip()}
        data["decoys"], data["boundary"] = {}, {}
    unknown = sorted(set(params) - set(data["methods"]))
    if unknown:
        raise SalauditError(
            f"--param for {', '.join(unknown)}, which is not among the methods "
            f"({', '.join(data['methods'])}); add it to --methods"
        )
    for name, p in params.items():
        data["methods"][name] = {**data["methods"][name], **p}
    for generator, d in decoys.items():
        data["decoys"][generator] = {**data["decoys"].get(generator, {}), **d}
    if boundary:
        data["boundary"] = {**data["boundary"], **boundary}
    return parse_spec(data, "the explain flags")


def _explain(args: argparse.Namespace) -> None:
    from salaudit.pipeline.explain import explain

    out = explain(_explain_spec(args), fresh=args.fresh, progress=not args.quiet)
    _repaired(out)
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


def _repaired(out: dict) -> None:
    for line in out.get("repaired", []):
        print(f"salaudit: damaged: {line}; recomputed with what read it")
    for line in out.get("warnings", []):
        print(f"salaudit: warning: {line}", file=sys.stderr)


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def _attack(args: argparse.Namespace) -> None:
    from salaudit.pipeline.attack import attack
    from salaudit.pipeline.spec import parse_spec

    data = DEFAULTS.model_dump(mode="json")
    if args.attacks:  # own attacks: only the parameters and radii the flags give
        data |= {"attacks": _names(args.attacks), "attack_params": {}, "radii": None}
    for name, p in _settings(args.param, "--param").items():
        data["attack_params"][name] = {**data["attack_params"].get(name, {}), **p}
    if args.radii:
        try:
            data["radii"] = [float(r) for r in _names(args.radii)]
        except ValueError:
            raise SalauditError(
                f"bad --radii {args.radii!r}; write numbers in units of 1/255, e.g. 2,8,32"
            ) from None
    spec = parse_spec(data, "the attack flags")
    out = attack(
        args.store,
        spec.attacks,
        params=spec.attack_params,
        radii=spec.radii,
        methods=_names(args.methods),
        device=args.device,
        progress=not args.quiet,
    )
    _repaired(out)
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
    from salaudit.pipeline.evaluate import evaluate
    from salaudit.report.tables import comparisons_table

    out = evaluate(
        args.store,
        _names(args.metrics),
        device=args.device,
        progress=not args.quiet,
        baseline=args.baseline,
    )
    _repaired(out)
    print(
        f"salaudit: {out['samples']} samples; {out['computed']} metric parts computed, the rest "
        f"were already in the store; metric baseline {out['baseline']}"
    )
    for note in out["notes"]:
        print(f"salaudit: {note}")
    if len(out["table"]["metric"]):
        print(comparisons_table(out["table"]).text())
    else:
        print("salaudit: no method pairs to compare (e.g. dance-grad with grad)")
    print(f"salaudit: metrics and statistics in {out['store']}/metrics and {out['store']}/stats")


def _report(args: argparse.Namespace) -> None:
    from salaudit.report.html import write_report

    report = write_report(args.store, args.out)
    print(f"salaudit: report of {args.store} in {report.location}")
    for section, why in report.missing.items():
        print(f"salaudit: {section}: {why}")


def _show(args: argparse.Namespace) -> None:
    from salaudit.report.display import show_sample

    names = show_sample(args.store, args.sample, args.out)
    print(f"salaudit: wrote {args.out} (image and {len(names)} maps: {', '.join(names)})")


def _spec(args: argparse.Namespace):
    from salaudit.pipeline.spec import load_spec, parse_spec

    spec = load_spec(args.spec)
    overrides = {
        "limit": getattr(args, "limit", None),
        "cluster": getattr(args, "cluster", None),
        "workers": getattr(args, "workers", None),
        "precision": getattr(args, "precision", None),
    }
    data = spec.model_dump(mode="json")
    data |= {k: v for k, v in overrides.items() if v is not None}
    if getattr(args, "store", None):
        data["store"]["url"] = args.store
    return parse_spec(data, args.spec or "the default spec")


def _audit(args: argparse.Namespace) -> None:
    import logging

    from salaudit.flows.audit import run_audit
    from salaudit.flows.cluster import check_cluster
    from salaudit.flows.server import prefect_api
    from salaudit.flows.watchdog import guard
    from salaudit.pipeline.audit import preflight

    spec = _spec(args).for_checkpoint(None)  # {checkpoint} is filled by a trigger only
    preflight(spec, args.fresh)  # bad input fails here, before Prefect or Dask start
    check_cluster(spec)
    guard()  # the server and workers this process starts die with it
    if args.quiet or not args.verbose:  # the progress bar says it; the Prefect UI has the logs
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        for name in ("prefect", "distributed"):
            logging.getLogger(name).setLevel(logging.WARNING)
    with prefect_api() as api:
        print(f"salaudit: auditing into {spec.store.url}; Prefect API {api}", flush=True)
        out = run_audit(spec, fresh=args.fresh, progress=not args.quiet)
    _repaired(out)
    print(
        f"salaudit: {out['samples']} samples, {out['units']} units "
        f"({len(out['recomputed_units'])} computed, the rest were already in the store)"
    )
    for note in out["notes"]:
        print(f"salaudit: {note}")
    print(
        f"salaudit: results in {out['store']}  (read with "
        f"xarray.open_datatree({out['store']!r}, engine='zarr')); statistics in "
        f"{out['store']}/stats"
    )
    if out["report"]:
        print(f"salaudit: report in {out['report']}")


def _compare(args: argparse.Namespace) -> int:
    from salaudit.pipeline.spec import load_spec
    from salaudit.report.compare import compare_stores

    spec = load_spec(args.spec) if args.spec else None
    thresholds = (dict(spec.compare.thresholds) if spec else {}) | _thresholds(args.threshold)
    alpha = args.alpha or (spec.compare.alpha if spec else 0.05)
    options = spec.store.storage_options if spec else None
    comparison = compare_stores(args.baseline, args.current, thresholds, alpha, options or None)
    print("\n".join(comparison.lines()))
    for note in comparison.notes:
        print(f"salaudit: {note}")
    print(f"salaudit: {args.current} against {args.baseline}: {comparison.verdict()}")
    return 1 if comparison.regressions else 0


def _thresholds(items: list[str]) -> dict[str, float]:
    """`METRIC=MAX_WORSENING` items -> {metric: threshold}."""
    out = {}
    for item in items:
        metric, _, value = item.partition("=")
        try:
            out[metric.strip()] = float(value)
        except ValueError:
            raise SalauditError(
                f"bad --threshold {item!r}; write METRIC=MAX_WORSENING, e.g. fidelity=0.05"
            ) from None
    return out


def _deploy(args: argparse.Namespace) -> None:
    from salaudit.flows.deploy import deploy

    spec = _spec(args)
    ids = deploy(spec, args.name, args.cron, args.pool, args.watch, args.every, args.pattern)
    for name, uid in ids.items():
        print(f"salaudit: deployment {name} ({uid}) in work pool {args.pool}")
    print(
        f"salaudit: run it now with: prefect deployment run 'salaudit-scheduled-audit/{args.name}'"
        f"; start a worker with: prefect worker start --pool {args.pool}"
    )


def _serve(args: argparse.Namespace) -> None:
    from salaudit.flows.deploy import serve

    serve(_spec(args), args.name, args.cron)


def _init(args: argparse.Namespace) -> None:
    from pathlib import Path

    from salaudit.pipeline.spec import SPECS

    path = Path(args.path)
    if path.exists() and not args.force:
        raise SalauditError(f"{path} exists; pass --force to overwrite it, or name another path")
    path.write_text(SPECS[args.kind])
    print(f"salaudit: wrote {path}; edit it, then: salaudit plan {path}; salaudit audit {path}")


def _plan(args: argparse.Namespace) -> None:
    from salaudit.flows.cluster import worker_count, worker_threads
    from salaudit.inputs.data import load_dataset
    from salaudit.pipeline.estimate import (
        FLOW_START_SECONDS,
        FLOW_UNIT_SECONDS,
        PROBE_SAMPLES,
        SHRUNK_SIDE,
        estimate,
    )

    spec = _spec(args)
    if args.samples is not None and args.samples < 1:
        raise SalauditError(f"--samples {args.samples}: give a number of samples of at least 1")
    n = args.samples or min(spec.sample_selection().n or 10**12, len(load_dataset(spec.data)))
    print("salaudit: calibrating every stage on this machine ...", flush=True)
    workers, threads = worker_count(spec), worker_threads(spec)
    started = time.perf_counter()
    est = estimate(spec, n, workers or 1, threads)
    how = (
        f"one sample: methods whose parameters fix their rows priced, attacked maps at the maps "
        f"stage's cost, the rest on the net's input shrunk to {SHRUNK_SIDE} px, each kind of "
        "pass timed once at full size"
        if est.shrunk
        else f"every stage run on 1 sample, then {PROBE_SAMPLES}"
    )
    print(f"salaudit: calibrated in {time.perf_counter() - started:.0f} s ({how})")
    shown = workers or "the scheduler's"
    print(f"audit of {n} samples of {spec.data} by {spec.model} into {spec.store.url}")
    print(f"  methods: {', '.join(spec.methods)}")
    print(f"  attacks: {', '.join(spec.attacks) or 'none'}")
    print(f"  cluster: {spec.cluster} ({shown} workers, {threads} torch threads each)")
    print(f"  {est.shards} shards of up to {spec.shard_size} samples, {est.units} units (tasks)")
    print(
        "  per stage: images through the model per sample; seconds per shard + per sample; "
        "the stage's compute over the audit on one worker"
    )
    for stage, per in est.stage_sample_seconds.items():
        print(
            f"    {stage:<8} {est.model_rows[stage]:>9,.0f} images "
            f"{est.stage_shard_seconds[stage]:>7.2f} s + {per:>7.3f} s "
            f"{_duration(est.stage_seconds[stage]):>10}"
        )
    print(
        f"  estimated time: {_duration(est.seconds)} ({FLOW_START_SECONDS:.0f} s start, "
        f"{FLOW_UNIT_SECONDS * est.units:.0f} s for the units, the compute on "
        f"{est.parallel:g} workers' worth of this machine)"
    )
    print(
        f"  storage: about {_size(est.stored_bytes)} in {est.objects:,} objects as written"
        + (" (decoy populations kept)" if spec.keep_decoys else "")
        + ("; the maps it priced without computing count as incompressible" if est.shrunk else "")
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:,.1f} h"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def _verify(args: argparse.Namespace) -> int:
    from salaudit.pipeline.repair import repair, verify

    if not args.repair:
        problems = verify(args.store)
        for p in problems:
            print(f"salaudit: damaged: {p.line()}")
        if problems:
            print(
                f"salaudit: {len(problems)} damaged chunk(s) in {args.store}; salaudit verify "
                f"{args.store} --repair recomputes them and what read them"
            )
            return 1
        print(f"salaudit: {args.store}: every done-marker holds what it recorded")
        return 0
    out = repair(args.store, device=args.device, progress=not args.quiet)
    for p in out["problems"]:
        print(f"salaudit: damaged: {p.line()}")
    if not out["problems"]:
        print(f"salaudit: {args.store}: every done-marker holds what it recorded; nothing to do")
        return 0
    print(
        f"salaudit: repaired {args.store}: {len(out['removed'])} region(s) invalidated, "
        f"{len(out['computed'])} part(s) recomputed, statistics rewritten"
    )
    _refresh_report(args.store)
    return 0


def _refresh_report(url: str) -> None:
    """Rebuild the store's report where one was written (its default place)."""
    from salaudit.inputs.uris import filesystem
    from salaudit.report.html import write_report
    from salaudit.store import schema

    location = schema.report_location(url)
    fs, path = filesystem(location)
    if fs.exists(f"{path}/index.html"):
        print(f"salaudit: report rebuilt in {write_report(url, location).location}")


COMMANDS = {
    "explain": _explain,
    "attack": _attack,
    "evaluate": _evaluate,
    "show": _show,
    "report": _report,
    "audit": _audit,
    "init": _init,
    "plan": _plan,
    "compare": _compare,
    "deploy": _deploy,
    "serve": _serve,
    "verify": _verify,
}


def main(argv: list[str] | None = None) -> int:
    """Run a command. Every error reaches the user as one line `salaudit: error: ...` naming
    the problem and the fix: exit 2 for bad input, 1 for a failed run or regression, 130 for
    Ctrl-C; `--debug` shows the traceback instead."""
    from salaudit.errors import AuditFailed, RegressionFound

    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args) or 0
    except SalauditError as e:
        return _fail(args, e, f"salaudit: error: {e}", 2)
    except RegressionFound as e:
        return _fail(args, e, f"salaudit: regression: {e}", 1)
    except AuditFailed as e:
        return _fail(args, e, f"salaudit: error: {e}", 1)
    except KeyboardInterrupt as e:
        message = "salaudit: interrupted: what was written is kept; running it again continues"
        return _fail(args, e, message, 130)
    except Exception as e:
        known = translate(e)
        if known is not None:
            return _fail(args, e, f"salaudit: error: {known}", 2)
        message = f"salaudit: error: {type(e).__name__}: {e}".splitlines()[0]
        return _fail(args, e, f"{message} (salaudit {args.command} --debug shows where)", 1)


def _fail(args: argparse.Namespace, error: BaseException, message: str, code: int) -> int:
    if getattr(args, "debug", False):
        raise error
    print(message, file=sys.stderr)
    return code


def translate(error: BaseException) -> str | None:
    """A fault from below salaudit (the file system, object storage, the Prefect API) as what
    it means and the fix; None for what salaudit does not know."""
    name = type(error).__name__
    if name == "NoCredentialsError":
        return (
            "no credentials for object storage: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        )
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectError", "ConnectTimeout"):
        return (
            f"cannot connect ({error}); check the endpoint (AWS_ENDPOINT_URL, storage_options, "
            "PREFECT_API_URL or --cluster) and that the service runs"
        )
    if isinstance(error, PermissionError):
        return f"permission denied: {error.filename}; write somewhere this user may"
    if isinstance(error, OSError) and error.errno == 30:
        return f"read-only file system: {error.filename}; write the store somewhere writable"
    if isinstance(error, NotADirectoryError | FileExistsError):
        return f"{error.filename} is a file where a folder is needed; choose another path"
    return None


if __name__ == "__main__":
    sys.exit(main())
