"""The template bank alone: how often does registration to the training objects recover
an object's pose in the dataset's frame when the relative poses are right? (issue 17)

The training split of a config's data (``--config``, e.g. ``long``) gives the bank: every
training object assembled at its true poses from the loader's points
(:class:`geo3d.apps.assembly.TemplateBank`, as ``AssemblyModule`` collects it). Every
held-out object, assembled at its true poses, is moved by one random rigid motion (scipy,
seeded) and given to ``TemplateBank.pose``; the estimated pose composed with the true
relative poses is scored with ``geo3d.eval.assembly_metrics(protocol="absolute")``. This
is the ceiling of the default pipeline's absolute accuracy given its relative assembly.

Usage::

    nice python benchmarks/assembly_template_bank.py --config long \\
        --out benchmarks/results/assembly_template_bank.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import env_info, write_json_atomic  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", default=None,
                    help="packaged config name (default long); repeat to layer further "
                         "packaged configs or YAML files on the first")
    ap.add_argument("--data-root", default=None, help="default: runs/<config>/data")
    ap.add_argument("--out", default="benchmarks/results/assembly_template_bank.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--settings", default="8:64",
                    help="comma list of TOP:COARSE_POINTS bank settings to compare "
                         "(default: the package default 8:64)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from geo3d.apps.assembly._canonical import TemplateBank, assembled_clouds
    from geo3d.apps.assembly.cli import config_path, run_lightning_cli
    from scipy.spatial.transform import Rotation

    from geo3d.eval import assembly_metrics

    configs = args.config or ["long"]
    root = args.data_root or f"runs/{configs[0]}/data"
    cfgs = [config_path(c) for c in configs]  # layered, the first is the base
    cli = run_lightning_cli([*(x for c in cfgs for x in ("--config", c)), "--data.root", root,
                             "--data.dense_points", "0", "--trainer.logger", "false"], run=False)
    dm = cli.datamodule
    dm.prepare_data()
    t0 = time.time()
    train = dm.dataset(dm.hparams.train_split, dense=False)
    objs = []
    for i in range(len(train)):
        it = train[i]
        objs.append(assembled_clouds(it["points"][None], it["valid"][None], it["rot"][None],
                                     it["trans"][None])[0])
    base = TemplateBank.from_objects(objs, num_points=cli.model.hparams.template_points)
    t_bank = time.time() - t0
    test = dm.dataset(dm.hparams.test_split, dense=False)
    items = [test[i] for i in range(len(test))]
    results = {}
    for setting in args.settings.split(","):
        top, coarse = (int(v) for v in setting.split(":"))
        bank = TemplateBank(base.templates, top=top, coarse_points=coarse)
        rng = np.random.default_rng(args.seed)  # the same motions for every setting
        accs, by_n, secs = [], {}, []
        for it in items:
            y = assembled_clouds(it["points"][None], it["valid"][None], it["rot"][None],
                                 it["trans"][None])[0]
            Q = torch.from_numpy(Rotation.random(random_state=rng).as_matrix())
            u = torch.from_numpy(rng.normal(size=3))
            t1 = time.time()
            T, _ = bank.pose(y @ Q.T + u)
            secs.append(time.time() - t1)
            A, b = T[:3, :3] @ Q, T[:3, :3] @ u + T[:3, 3]  # estimated pose of the truth
            rot, trans = it["rot"].double(), it["trans"].double()
            m = assembly_metrics(it["points"].double()[None], it["valid"].bool()[None],
                                 (A @ rot)[None], (trans @ A.T + b)[None], rot[None],
                                 trans[None], protocol="absolute")
            accs.append(float(m["part_acc"]))
            by_n.setdefault(str(int(it["valid"].sum())), []).append(accs[-1])
        results[f"top={top},coarse_points={coarse}"] = {
            "absolute_part_acc": float(np.mean(accs)),
            "objects_all_parts_right": int(sum(a == 1.0 for a in accs)),
            "absolute_part_acc_by_num_parts": {k: {"num_objects": len(v),
                                                   "part_acc": float(np.mean(v))}
                                               for k, v in sorted(by_n.items())},
            "sec_per_object": float(np.mean(secs))}
        print(setting, results[f"top={top},coarse_points={coarse}"], flush=True)
    out = {"what": "absolute part accuracy of the bank's pose applied to the true relative "
                   "poses (held-out objects, one random rigid motion each, the same for "
                   "every setting)",
           "config": " + ".join(configs), "bank_objects": len(base), "test_objects": len(items),
           "results": results, "bank_seconds": t_bank, "args": vars(args), "env": env_info()}
    write_json_atomic(args.out, out)


if __name__ == "__main__":
    main()
