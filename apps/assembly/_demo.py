"""``geo3d assembly demo``: synthetic fractures -> train equivariant + Global -> compare.

Steps: generate a small synthetic fracture set (Breaking Bad layout), train the
equivariant model (no rotation augmentation) and the Global baseline (random rotation
augmentation, as the benchmark) with the packaged configs, evaluate both on held-out
objects whose pieces are randomly rotated, under protocols (a) absolute and (b) anchor,
add the open3d registration baseline on the two-piece objects, print a metrics table and
write pictures, PLYs and ``results.json`` under ``--out``.

``--eval-only`` re-evaluates the checkpoints an earlier run recorded in
``OUT/results.json`` (``runs.<model>.checkpoint``) with the current test-time pipeline:
no data generation and no training, only the test stage, the tables and the pictures
(training records such as ``fit_seconds`` and the training ``command`` are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from geo3d.apps.assembly._checkpoint import atomic_write_text

__all__ = ["demo_main", "format_table", "format_parts_table", "format_timing_table",
           "method_rows"]

_COLS = [
    ("part_acc", "PA %", 100.0),
    ("rmse_r_euler", "RMSE(R) euler°", 1.0),
    ("rmse_r_geo", "RMSE(R) geo°", 1.0),
    ("mae_r_geo", "MAE(R) geo°", 1.0),
    ("rmse_t", "RMSE(T)", 1.0),
    ("shape_cd", "CD ×1e3", 1000.0),
]


def format_table(rows: list[tuple[str, str, dict[str, float]]]) -> str:
    """Plain-text table of ``(model, protocol, metrics)`` rows."""
    head = f"{'model':<26}{'protocol':<10}" + "".join(f"{c[1]:>16}" for c in _COLS)
    lines = [head, "-" * len(head)]
    for model, proto, m in rows:
        cells = "".join(
            f"{m[k] * s:>16.2f}" if k in m else f"{'-':>16}" for k, _, s in _COLS
        )
        lines.append(f"{model:<26}{proto:<10}{cells}")
    return "\n".join(lines)


def method_rows(runs: dict[str, Any]) -> list[tuple[str, str, dict[str, float]]]:
    """Table rows ``(model/method, protocol, metrics)`` of every run and evaluated method
    (runs recorded before the matching pipeline have only the network's poses)."""
    rows = []
    for name, r in runs.items():
        methods = r["metrics"].get("methods")
        if not methods:
            methods = {"network": {p: r["metrics"].get(p, {}) for p in ("absolute", "anchor")}}
        for method, res in methods.items():
            for proto in ("absolute", "anchor"):
                rows.append((f"{name}/{method}", proto, res.get(proto, {})))
    return rows


def format_parts_table(runs: dict[str, Any]) -> str:
    """Part accuracy (%) per number of pieces, both protocols, every run and method."""
    counts: set[int] = set()
    for r in runs.values():
        for res in r["metrics"].get("methods", {}).values():
            for by in res.get("part_acc_by_num_parts", {}).values():
                counts |= {int(n) for n in by}
    ns = sorted(counts)
    if not ns:
        return ""
    head = f"{'model/method':<26}{'protocol':<10}" + "".join(f"{f'{n} pcs':>12}" for n in ns)
    lines = [head, "-" * len(head)]
    for name, r in runs.items():
        for method, res in r["metrics"].get("methods", {}).items():
            by = res.get("part_acc_by_num_parts", {})
            for proto in ("absolute", "anchor"):
                cells = "".join(
                    f"{by[proto][str(n)]['part_acc'] * 100:>7.1f} (n={by[proto][str(n)]['num_objects']:<3})"
                    .rjust(12) if str(n) in by.get(proto, {}) else f"{'-':>12}" for n in ns)
                lines.append(f"{name + '/' + method:<26}{proto:<10}{cells}")
    return "\n".join(lines)


def format_timing_table(runs: dict[str, Any]) -> str:
    """Wall milliseconds per object and pipeline stage (evaluation batches, CPU)."""
    stages = ["network", "match", "ransac", "global", "refine", "total"]
    head = f"{'model/method':<26}" + "".join(f"{s + ' ms':>12}" for s in stages)
    lines = [head, "-" * len(head)]
    for name, r in runs.items():
        for method, res in r["metrics"].get("methods", {}).items():
            t = res.get("time_s_per_object", {})
            cells = "".join(f"{t[s] * 1e3:>12.1f}" if s in t else f"{'-':>12}" for s in stages)
            lines.append(f"{name + '/' + method:<26}{cells}")
    return "\n".join(lines)


def _train_and_test(
    name: str, configs: list[str], out: Path, data_root: Path, extra: list[str]
) -> dict[str, Any]:
    from geo3d.apps.assembly.cli import run_lightning_cli

    args = ["fit"]
    for c in configs:
        args += ["--config", c]
    args += ["--data.root", str(data_root), "--trainer.default_root_dir", str(out / name), *extra]
    print(f"\n=== training {name}: geo3d assembly {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    cli = run_lightning_cli(args)
    fit_s = time.perf_counter() - t0
    print(f"=== testing {name} on held-out objects (randomly rotated pieces)", flush=True)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    model = cli.model
    log_dir = Path(cli.trainer.log_dir or out / name)
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "metrics": model.last_results,
        "fit_seconds": fit_s,
        "train_parts_per_s": model.train_parts / max(model.train_seconds, 1e-9),
        "num_parameters": n_params,
        "log_dir": str(log_dir),
        # absolute: --eval-only may run from another working directory
        "checkpoint": _abs(getattr(cli.trainer.checkpoint_callback, "last_model_path", "")),
        "pictures": str(log_dir / "pictures_test"),
        "command": "geo3d assembly " + " ".join(args),
        "cli_args": args,
        **_progress(log_dir),
    }


def _progress(log_dir: Path) -> dict[str, int]:
    """``{"epoch", "global_step"}`` of the tested weights (from ``results_test.json``)."""
    try:
        r = json.loads((log_dir / "results_test.json").read_text())
        return {"epoch": int(r["epoch"]), "global_step": int(r["global_step"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _test_checkpoint(
    name: str, configs: list[str], out: Path, data_root: Path, extra: list[str],
    checkpoint: Path, old: dict[str, Any],
) -> dict[str, Any]:
    """Test stage of ``checkpoint`` with the current pipeline (no training); the run
    record ``old`` keeps its training entries and gets new metrics/pictures/log dir.
    The model/data arguments are the training run's (``old["cli_args"]``, so overrides
    given at training apply again), followed by ``extra``."""
    from geo3d.apps.assembly.cli import run_lightning_cli

    recorded = old.get("cli_args")
    if isinstance(recorded, list) and recorded[:1] == ["fit"]:
        args = [str(x) for x in recorded[1:]] + list(extra)
    else:  # a run recorded before cli_args existed: the packaged configs
        args = []
        for c in configs:
            args += ["--config", c]
        args += ["--data.root", str(data_root), "--trainer.default_root_dir",
                 str(out / name), *extra]
    cmd = f"geo3d assembly test {' '.join(args)} --ckpt_path {checkpoint}"
    print(f"\n=== re-evaluating {name} (no training): {cmd}", flush=True)
    t0 = time.perf_counter()
    cli = run_lightning_cli(args, run=False)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=str(checkpoint),
                     verbose=False)
    log_dir = Path(cli.trainer.log_dir or out / name)
    return {
        **old,
        "metrics": cli.model.last_results,
        "log_dir": str(log_dir),
        "pictures": str(log_dir / "pictures_test"),
        "evaluated_checkpoint": str(checkpoint),
        "eval_command": cmd,
        "eval_seconds": time.perf_counter() - t0,
        **_progress(log_dir),
    }


def _registration(datamodule: Any, seed: int) -> dict[str, Any] | None:
    try:
        import open3d  # noqa: F401
    except ImportError:
        print("open3d not installed: skipping the registration baseline", flush=True)
        return None
    from geo3d.apps.assembly._registration import registration_baseline

    from geo3d.eval import anchor_parts, assembly_metrics

    sums: dict[str, float] = {}
    count = 0
    for batch in datamodule.test_dataloader():
        valid = batch["valid"].bool()
        pts = batch["points"]
        anchor = anchor_parts(pts, valid)
        rot, trans, used = registration_baseline(pts, valid, batch["rot"], batch["trans"], anchor, seed)
        if not bool(used.any()):
            continue
        m = assembly_metrics(
            pts[used], valid[used], rot[used], trans[used], batch["rot"][used],
            batch["trans"][used], protocol="anchor", anchor=anchor[used], reduction="none",
        )
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + float(v.sum())
        count += int(used.sum())
    if count == 0:
        return None
    return {"num_objects": count, "anchor": {k: v / count for k, v in sums.items()}}


def _load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (None where the OS has none): timings come from a
    shared machine."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _abs(path: object) -> str:
    """``path`` made absolute against the working directory ("" stays "")."""
    return os.path.abspath(str(path)) if str(path or "") else ""


def _find_checkpoint(recorded: str, out: Path) -> Path | None:
    """The file a ``results.json`` checkpoint entry names: an absolute path as is; a
    relative one (older runs stored it relative to the training run's working directory,
    e.g. ``runs/demo/equivariant/...``) against the output folder, with leading parts
    dropped one by one (the old output-folder prefix), then against the working
    directory. ``None`` if none of these is a file."""
    c = Path(recorded)
    if c.is_absolute():
        return c if c.is_file() else None
    cands = [out / Path(*c.parts[k:]) for k in range(len(c.parts))] + [c]
    return next((Path(_abs(f)) for f in cands if f.is_file()), None)


def _previous_results(path: Path, config_set: str) -> dict[str, Any]:
    """The ``results.json`` of an earlier run of the same config set, or ``{}``."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) and old.get("config_set") == config_set else {}


def demo_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="geo3d assembly demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--config-set", default="demo", choices=["demo", "long", "long8"],
                   help="packaged configs: demo (minutes), long (2-3 pieces) or long8 "
                        "(2-8 pieces)")
    p.add_argument("--max-epochs", type=int, default=None, help="override trainer.max_epochs")
    p.add_argument("--no-registration", action="store_true", help="skip the open3d baseline")
    p.add_argument("--models", default="equivariant,global",
                   help="comma list of models to train (runs of the other models already in "
                        "OUT/results.json are kept: two processes can train one model each)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: small models gain little from more "
                        "and lose a lot on a shared machine)")
    p.add_argument("--eval-only", action="store_true",
                   help="no training: re-evaluate the checkpoints recorded in OUT/results.json "
                        "(same --config-set) with the current test-time pipeline and rewrite "
                        "the tables, pictures and results.json")
    a, extra = p.parse_known_args(argv)
    from geo3d._app import check_output_path

    out = check_output_path(a.out, "--out", "folder")  # before anything is trained
    torch.set_num_threads(max(1, a.threads))
    data_root = out / "data"
    if a.max_epochs is not None:
        if a.eval_only:
            p.error("--max-epochs: expected no value with --eval-only (nothing is trained)")
        extra += ["--trainer.max_epochs", str(a.max_epochs)]
    t_start = time.perf_counter()
    load_start = _load_average()

    from geo3d.apps.assembly.cli import config_path

    models = [m.strip() for m in a.models.split(",") if m.strip()]
    if not models:
        p.error(f"--models: expected equivariant and/or global, got {a.models!r}")
    for m in models:
        if m not in ("equivariant", "global"):
            p.error(f"--models: expected equivariant and/or global, got {m!r}")
    configs = {
        "equivariant": [config_path(a.config_set)],
        "global": [config_path(a.config_set), config_path(f"{a.config_set}_global")],
    }
    runs: dict[str, Any] = {}
    if a.eval_only:
        old = _previous_results(out / "results.json", a.config_set)
        if old and not isinstance(old.get("runs"), dict):
            p.error(f"--eval-only: expected 'runs' in {out / 'results.json'} to be an object "
                    f"of run records, got {type(old.get('runs')).__name__}")
        if old and not isinstance(old.get("registration"), (dict, type(None))):
            p.error(f"--eval-only: expected 'registration' in {out / 'results.json'} to be an "
                    f"object or null, got {type(old.get('registration')).__name__}")
        todo = {m: old["runs"][m] for m in models if m in old.get("runs", {})}
        if not todo:
            p.error(f"--eval-only: expected {out / 'results.json'} of an earlier "
                    f"--config-set {a.config_set} run with a checkpoint of {', '.join(models)}, "
                    f"got {'no such run' if old else 'no results of that config set'}")
        found = {}
        for m, r in todo.items():
            if not isinstance(r, dict):
                p.error(f"--eval-only: expected the {m} run in {out / 'results.json'} to be "
                        f"an object, got {type(r).__name__}")
            rec = r.get("checkpoint")
            found[m] = _find_checkpoint(rec, out) if isinstance(rec, str) and rec else None
            if found[m] is None:
                p.error(f"--eval-only: expected the {m} checkpoint recorded in "
                        f"{out / 'results.json'} to exist (absolute, or relative to the "
                        f"output folder or the working directory), got {rec!r}")
        for k, v in old["runs"].items():  # what the tables below read
            need = ("fit_seconds", "train_parts_per_s", "num_parameters") + \
                (() if k in todo else ("metrics",))
            bad = [f for f in need if not isinstance(v, dict) or f not in v or
                   not isinstance(v[f], dict if f == "metrics" else (int, float))]
            if bad:
                p.error(f"--eval-only: expected the {k} run in {out / 'results.json'} to be "
                        f"an object with {', '.join(need)}, got "
                        f"{sorted(v) if isinstance(v, dict) else type(v).__name__}")
        prep = None  # only the registration baseline needs it (built below if so)
        for m, r in todo.items():
            runs[m] = _test_checkpoint(m, configs[m], out, data_root, extra, found[m],
                                       {**r, "checkpoint": str(found[m])})
        runs.update({k: v for k, v in old["runs"].items() if k not in runs})
    else:
        out.mkdir(parents=True, exist_ok=True)
        # generate the data once, before any training process needs it
        from geo3d.apps.assembly.cli import run_lightning_cli

        prep = run_lightning_cli(["--config", config_path(a.config_set),
                                  "--data.root", str(data_root), *extra,
                                  "--trainer.logger", "false"], run=False)
        print(f"=== data: {data_root} (generated on first use)", flush=True)
        prep.datamodule.prepare_data()
        for m in models:
            runs[m] = _train_and_test(m, configs[m], out, data_root, extra)
        # read after training: another process (--models) may have finished meanwhile
        old = _previous_results(out / "results.json", a.config_set)
        runs.update({k: v for k, v in old.get("runs", {}).items() if k not in models})
    runs = {k: runs[k] for k in ("equivariant", "global") if k in runs}
    rows = method_rows(runs)
    # --no-registration keeps a baseline computed by another run
    # (and --eval-only keeps it: the open3d baseline does not use the checkpoints)
    reg = old.get("registration") if a.no_registration or a.eval_only else None
    if reg is not None:
        rows.append((f"registration (n={reg['num_objects']})", "anchor", reg["anchor"]))
    if not a.no_registration and reg is None:
        print("\n=== registration baseline (open3d FPFH+RANSAC+ICP, two-piece objects)",
              flush=True)
        if prep is None:
            from geo3d.apps.assembly.cli import run_lightning_cli

            prep = run_lightning_cli(["--config", config_path(a.config_set),
                                      "--data.root", str(data_root), *extra,
                                      "--trainer.logger", "false"], run=False)
        reg = _registration(prep.datamodule, seed=0)
        if reg is not None:
            rows.append((f"registration (n={reg['num_objects']})", "anchor", reg["anchor"]))
    table = format_table(rows)
    n_obj = next(iter(runs.values()))["metrics"].get("num_objects", 0)
    print(f"\n=== held-out objects: {n_obj}, pieces randomly rotated; "
          "absolute = Breaking Bad frame, anchor = largest piece fixed to its true pose\n")
    print(table)
    parts_table = format_parts_table(runs)
    timing_table = format_timing_table(runs)
    print("\npart accuracy (%) per number of pieces (n = objects)\n" + parts_table)
    print("\nwall time per object and stage (ms, CPU, shared machine)\n" + timing_table)
    for name, r in runs.items():
        print(f"{name}: fit {r['fit_seconds']:.0f} s, {r['train_parts_per_s']:.1f} parts/s "
              f"(train steps), {r['num_parameters']} parameters")
    result = {
        "config_set": a.config_set,
        "runs": runs,
        "registration": reg,
        "table": table,
        "parts_table": parts_table,
        "timing_table": timing_table,
        "total_seconds": time.perf_counter() - t_start,
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "load_average_1_5_15min": {"start": load_start, "end": _load_average()}},
    }
    if a.eval_only:  # this call's own record; the training run's totals stay
        result["eval_only"] = {"command": "geo3d assembly demo " + " ".join(argv),
                               "seconds": result["total_seconds"]}
        result["total_seconds"] = old.get("total_seconds", result["total_seconds"])
    atomic_write_text(out / "results.json", json.dumps(result, indent=2))
    print(f"\nwritten: {out / 'results.json'}")
    for name, r in runs.items():
        print(f"  {name}: pictures {r['pictures']}/ (PNG + PLY), checkpoint {r['checkpoint']}, "
              f"TensorBoard logs {r['log_dir']}")
    took = result["eval_only"]["seconds"] if a.eval_only else result["total_seconds"]
    print(f"total {took:.0f} s")
    return 0
