"""ArtEq evidence table: equivariant model vs non-equivariant baseline vs optimisation.

Held-out synthetic subjects and motions of the Anny-derived SMPL-layout body (the data
module of ``geo3d arteq``, config ``demo``: 512 points per scan, 1 mm noise). Models:

* ``equivariant`` — ArtEqNet with an equivariant backbone (``vn_dgcnn``, the demo config's),
  trained with ``geo3d arteq fit --config demo``;
* ``baseline`` — the same heads on a DGCNN encoder (``--model.backbone dgcnn``), same data,
  same Haar-uniform rotation augmentation;
* ``optimization`` — :func:`geo3d.apps.arteq._optim.optimize_smpl` (multi-start fitting,
  no network), on the first ``--opt-scans`` scans of every condition (it costs ~1 min per
  scan here).

Conditions: ``in_dist``, ``ood`` (joint-limit poses), ``rotated`` (in_dist scans under
random global rotations), ``partial`` (single-view depth scans). Metrics: V2V and MPJPE (24
SMPL joints) in cm without alignment, point part accuracy (fraction). ``sec_per_scan_cpu``:
median wall-clock time of one scan alone (batch 1, 1 thread): network + decode for the
nets, the whole optimisation for the baseline.

Writes ``benchmarks/results/arteq.json`` as ``{model: {condition: {v2v_cm, mpjpe_cm,
part_acc}, sec_per_scan_cpu, params}}`` plus a ``meta`` entry (commands, scan counts,
machine, load). Parts can run as separate processes and be merged::

    nice -n 5 python benchmarks/arteq.py --part nets --out runs/arteq_bench &
    nice -n 5 python benchmarks/arteq.py --part opt --out runs/arteq_bench &
    wait; python benchmarks/arteq.py --part merge --out runs/arteq_bench

``--part timing`` re-times the trained nets (checkpoints named in ``bench_nets.json``) at
batch 1 on one thread, e.g. once the machine is quieter than while training; ``merge`` then
uses those figures (the ones measured right after training stay in ``meta.timing``).
``merge`` also records the issue's derived ratios in ``meta.derived``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, env_info, write_json_atomic  # noqa: E402

CONDITIONS = ("in_dist", "ood", "rotated", "partial")


def _metrics(fit: Any, gt: Any, labels: torch.Tensor) -> dict[str, float]:
    from geo3d.eval import mpjpe, part_accuracy_points, v2v_error

    m = {"v2v_cm": float(100 * v2v_error(fit.vertices.float(), gt.vertices.float()).mean()),
         "mpjpe_cm": float(100 * mpjpe(fit.joints[:, :24].float(), gt.joints[:, :24].float())
                           .mean())}
    if fit.part_labels is not None:
        m["part_acc"] = float(part_accuracy_points(fit.part_labels.long(), labels).mean())
    return m


def _gt(body: Any, batch: dict[str, torch.Tensor]) -> Any:
    return body(betas=batch["betas"], global_orient=batch["global_orient"].unsqueeze(1),
                body_pose=batch["body_pose"], transl=batch["transl"], pose2rot=False)


def betas_only_v2v_cm(body: Any, betas: torch.Tensor, batch: dict[str, torch.Tensor],
                      gt: Any) -> float:
    """V2V (cm) of the true pose and translation of ``batch`` with ``betas``: the error of a
    shape estimate alone (``gt``: :func:`_gt` of the batch)."""
    from geo3d.eval import v2v_error

    out = body(betas=betas, global_orient=batch["global_orient"][:, None],
               body_pose=batch["body_pose"], transl=batch["transl"], pose2rot=False)
    return float(100 * v2v_error(out.vertices.float(), gt.vertices.float()).mean())


def _datamodule(config: str, out: Path, extra: list[str]) -> Any:
    from geo3d.apps.arteq.cli import run_lightning_cli

    cli = run_lightning_cli(["--config", config, "--data.root", str(out / "data"), *extra,
                             "--trainer.logger", "false"], run=False)
    cli.datamodule.prepare_data()
    return cli.datamodule, cli.model


def demo_datamodule(data_root: str) -> Any:
    """The ``demo`` config's data module on ``data_root`` (generated on first use)."""
    from geo3d.apps.arteq.cli import config_path

    return _datamodule(config_path("demo"), Path(data_root).parent,
                       ["--data.root", data_root])[0]


def load_module(checkpoint: str) -> tuple[Any, dict]:
    """The :class:`~geo3d.apps.arteq._module.ArtEqModule` of a ``geo3d arteq fit``
    checkpoint (``weights_only`` load) and the loaded checkpoint dict."""
    from geo3d.apps.arteq._module import ArtEqModule

    from geo3d._app import load_checkpoint

    st = load_checkpoint(checkpoint)
    module = ArtEqModule(**{k: v for k, v in st["hyper_parameters"].items()
                            if not k.startswith("_")})
    module.load_state_dict(st["state_dict"])
    return module.eval(), st


def part_nets(a: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    from geo3d.apps.arteq._demo import train_and_test
    from geo3d.apps.arteq._fit import decode
    from geo3d.apps.arteq.cli import config_path

    cfg = config_path(a.config)
    res: dict[str, Any] = {}
    old = Path(a.out) / "bench_nets.json"
    if old.is_file():  # keep the other model's run (--models trains a subset)
        res = {k: v for k, v in json.loads(old.read_text()).items() if k not in a.models}
    for name in a.models:
        r = train_and_test(name, cfg, Path(a.out), ["--data.root", str(Path(a.out) / "data"),
                                                    *extra])
        cli = r.pop("_cli")
        module, dm = cli.model.eval(), cli.datamodule
        net, body = module.net.eval(), module.body()
        ds = dm.dataset("in_dist")
        times = []
        with torch.no_grad():
            for i in range(min(a.timing_scans, len(ds))):
                pts = ds[i]["points"][None]
                t0 = time.perf_counter()
                out = net(pts)
                decode(out, body, pts, icp_steps=int(module.hparams.icp_steps))
                times.append(time.perf_counter() - t0)
        res[name] = {c: {k: r["metrics"][c][k] for k in ("v2v_cm", "mpjpe_cm", "part_acc")}
                     for c in CONDITIONS if c in r["metrics"]}
        res[name]["sec_per_scan_cpu"] = statistics.median(times)
        res[name]["params"] = r["params"]
        res[name]["_run"] = {"command": r["command"], "fit_seconds": r["fit_seconds"],
                             "checkpoint": r["checkpoint"], "pictures": r["pictures"],
                             "num_scans": {c: r["metrics"][c]["num_scans"]
                                           for c in r["metrics"]},
                             "icp_steps": int(module.hparams.icp_steps),
                             "timing_scans": len(times)}
        write_json_atomic(Path(a.out) / "bench_nets.json", res)
    return res


def part_opt(a: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    from geo3d.apps.arteq._optim import optimize_smpl
    from geo3d.apps.arteq.cli import config_path

    dm, module = _datamodule(config_path(a.config), Path(a.out), extra)
    body = module.body()
    res: dict[str, Any] = {}
    times: list[float] = []
    counts: dict[str, int] = {}
    for cond in a.opt_conditions:
        ds = dm.dataset(cond)
        sums: dict[str, float] = {}
        n = min(a.opt_scans, len(ds))
        done = 0
        for i in range(n):
            item = ds[i]
            batch = {k: v[None] for k, v in item.items()}
            t0 = time.perf_counter()
            fit = optimize_smpl(batch["points"], body, num_starts=a.opt_starts,
                                steps=a.opt_steps, full_scan=(cond != "partial"))
            times.append(time.perf_counter() - t0)
            with torch.no_grad():
                m = _metrics(fit, _gt(body, batch), batch["labels"])
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v
            print(f"optimization {cond} {i + 1}/{n}: {m} ({times[-1]:.0f} s)", flush=True)
            done += 1
            # written after every scan: an interrupted run keeps what it measured
            res[cond] = {k: v / done for k, v in sums.items()}
            counts[cond] = done
            res["sec_per_scan_cpu"] = statistics.median(times)
            res["params"] = 0
            res["_run"] = {"num_scans": dict(counts), "num_starts": a.opt_starts,
                           "steps": a.opt_steps,
                           "function": "geo3d.apps.arteq._optim.optimize_smpl"}
            write_json_atomic(Path(a.out) / "bench_opt.json", {"optimization": res})
    return {"optimization": res}


def part_timing(a: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    from geo3d.apps.arteq._checkpoint import load_model
    from geo3d.apps.arteq._fit import decode
    from geo3d.apps.arteq.cli import config_path

    out = Path(a.out)
    nets = json.loads((out / "bench_nets.json").read_text())
    dm, module = _datamodule(config_path(a.config), out, extra)
    body = module.body()
    ds = dm.dataset("in_dist")
    res: dict[str, Any] = {}
    for name, r in nets.items():
        net = load_model(r["_run"]["checkpoint"]).eval()
        times = []
        with torch.no_grad():
            for i in range(min(a.timing_scans, len(ds)) + 1):  # + one warm-up
                pts = ds[i]["points"][None]
                t0 = time.perf_counter()
                decode(net(pts), body, pts, icp_steps=int(r["_run"].get("icp_steps", 1)))
                times.append(time.perf_counter() - t0)
        res[name] = {"sec_per_scan_cpu": statistics.median(times[1:]), "scans": len(times) - 1,
                     "loadavg_1min": os.getloadavg()[0],
                     "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json_atomic(out / "bench_timing.json", res)
    print(json.dumps(res, indent=1))
    return res


def _derived(table: dict[str, Any]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for name in ("equivariant", "baseline"):
        r = table.get(name, {})
        if "in_dist" in r and "ood" in r:
            d[f"{name}_ood_over_in_dist_v2v"] = r["ood"]["v2v_cm"] / r["in_dist"]["v2v_cm"]
        if "in_dist" in r and "rotated" in r:
            d[f"{name}_rotated_vs_in_dist_rel"] = \
                r["rotated"]["v2v_cm"] / r["in_dist"]["v2v_cm"] - 1.0
    eq, opt = table.get("equivariant"), table.get("optimization")
    if eq and opt:
        d["speedup_vs_optimization"] = opt["sec_per_scan_cpu"] / eq["sec_per_scan_cpu"]
        if "in_dist" in eq and "in_dist" in opt:
            d["equivariant_over_optimization_in_dist_v2v"] = \
                eq["in_dist"]["v2v_cm"] / opt["in_dist"]["v2v_cm"]
    return d


def merge(a: argparse.Namespace, argv: list[str]) -> Path:
    out = Path(a.out)
    nets = json.loads((out / "bench_nets.json").read_text())
    opt = json.loads((out / "bench_opt.json").read_text())
    timing_file = out / "bench_timing.json"
    retimed = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    under_load = {k: v["sec_per_scan_cpu"] for k, v in nets.items()}
    for k, v in retimed.items():
        if k in nets:
            nets[k]["sec_per_scan_cpu"] = v["sec_per_scan_cpu"]
    if a.opt_sec_per_scan is not None and "optimization" in opt:
        under_load["optimization"] = opt["optimization"]["sec_per_scan_cpu"]
        opt["optimization"]["sec_per_scan_cpu"] = a.opt_sec_per_scan
    table: dict[str, Any] = {}
    runs: dict[str, Any] = {}
    both = {**nets, **opt}
    for name in [m for m in ("equivariant", "baseline", "optimization") if m in both]:
        r = both[name]
        runs[name] = r.pop("_run", {})
        conds = {c: r[c] for c in CONDITIONS if c in r}
        table[name] = {**conds, "sec_per_scan_cpu": r["sec_per_scan_cpu"], "params": r["params"]}
    table["meta"] = {
        "note": a.load_note or (
            "CPU: 2 cores shared with other jobs: absolute times are inflated, ratios between "
            "models measured in the same conditions. Nets trained with the demo config (512 "
            "points per scan, not ArtEq's 5000); the optimisation baseline ran on a subset."),
        "data": "held-out synthetic subjects (betas) and motions of the Anny-derived SMPL-layout "
                "body; ood = joint-limit poses; rotated = Haar-random global rotation; partial "
                "= single-view depth scans",
        "units": "v2v_cm, mpjpe_cm: cm (no alignment; MPJPE over the 24 SMPL joints); "
                 "part_acc: fraction of points; sec_per_scan_cpu: one scan, batch 1, 1 thread",
        "commands": ["nice -n 5 python benchmarks/arteq.py --part nets --out " + str(out),
                     "nice -n 5 python benchmarks/arteq.py --part opt --out " + str(out),
                     "python benchmarks/arteq.py --part merge --out " + str(out)],
        "remark": a.note,
        "runs": runs,
        "env": env_info("cpu"),
        "derived": _derived(table),
        "timing": {"retimed": retimed, "under_load_sec_per_scan_cpu": under_load,
                   "optimization_sec_per_scan_note": a.opt_sec_note},
    }
    path = write_json_atomic(a.results, table)
    print(json.dumps({k: v for k, v in table.items() if k != "meta"}, indent=1))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["nets", "opt", "timing", "merge"], required=True)
    p.add_argument("--out", default="runs/arteq_bench")
    p.add_argument("--config", action="append", default=None,
                   help="packaged config name or YAML (default demo); repeat to layer "
                        "further YAML files on the first, as LightningCLI does")
    p.add_argument("--models", nargs="+", default=["equivariant", "baseline"],
                   choices=["equivariant", "baseline"], help="nets: which to (re)train")
    p.add_argument("--timing-scans", type=int, default=8)
    p.add_argument("--opt-scans", type=int, default=2)
    p.add_argument("--opt-conditions", nargs="+", default=list(CONDITIONS),
                   choices=list(CONDITIONS), help="opt: conditions, in this order")
    p.add_argument("--opt-starts", type=int, default=8)
    p.add_argument("--opt-steps", type=int, default=60)
    p.add_argument("--note", default="", help="merge: a remark stored in meta.remark")
    p.add_argument("--opt-sec-per-scan", type=float, default=None,
                   help="merge: the optimisation's s/scan to report (e.g. measured in the same "
                        "load window as --part timing); bench_opt.json's stays in meta.timing")
    p.add_argument("--opt-sec-note", default="", help="merge: where --opt-sec-per-scan is from")
    p.add_argument("--load-note", default="", help="merge: machine load during the runs "
                   "(meta.note; default: a generic shared-CPU note)")
    p.add_argument("--results", default=str(RESULTS_DIR / "arteq.json"),
                   help="merged table (default benchmarks/results/arteq.json)")
    a, extra = p.parse_known_args(argv)
    # a repeated --config layers on the first (it used to replace it silently: a run given
    # `--config demo --config more.yaml` then trained on more.yaml alone, with the module's
    # and data's defaults for everything else)
    configs = a.config or ["demo"]
    a.config = configs[0]
    extra = [x for c in configs[1:] for x in ("--config", c)] + extra
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    if a.part == "nets":
        part_nets(a, extra)
    elif a.part == "opt":
        part_opt(a, extra)
    elif a.part == "timing":
        part_timing(a, extra)
    else:
        merge(a, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
