"""Learning curves of an assembly run from its TensorBoard logs: training loss terms per
step (pose loss, contrastive descriptor loss, fracture BCE) and the validation part
accuracy of each evaluated method (anchor and absolute protocols) per epoch.

Usage::

    python benchmarks/assembly_curves.py runs/demo/equivariant/lightning_logs/version_1 \\
        --out benchmarks/results/assembly_demo_curves
    # writes <out>.json (the scalars) and <out>.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TRAIN_TAGS = ("train/loss", "train/rot", "train/corr_desc", "train/corr_frac")


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of every event file under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(log_dir.glob("events.out.tfevents*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {k: sorted(v) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log_dir")
    p.add_argument("--out", required=True, help="output path without extension")
    a = p.parse_args()
    sc = read_scalars(Path(a.log_dir))
    val = {k: v for k, v in sc.items()
           if (k.startswith("val/") or k.startswith("test/")) and k.endswith("/part_acc")
           and k.count("/") == 3}
    keep = {k: v for k, v in sc.items() if k in TRAIN_TAGS or k in val}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"log_dir": a.log_dir, "scalars": keep},
                                                   indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for tag in TRAIN_TAGS:
        if tag in sc:
            s, v = zip(*sc[tag], strict=True)
            ax1.plot(s, v, label=tag.split("/", 1)[1], lw=1)
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss term")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    epochs = sc.get("epoch", [])
    step_to_epoch = dict(epochs)
    for tag, pts in sorted(val.items()):
        s, v = zip(*pts, strict=True)
        ep = [step_to_epoch.get(x, x) for x in s]
        ax2.plot(ep, [100 * x for x in v], "o-", label=tag.split("/", 1)[1])
    ax2.set_xlabel("epoch (val) / step (test)")
    ax2.set_ylabel("part accuracy %")
    ax2.legend(fontsize=8)
    fig.suptitle(a.log_dir, fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=90)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
