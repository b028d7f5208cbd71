#!/usr/bin/env python
"""Plots identity colour error and lip-sync r against time from `syncdreamer evaluate synthetic --output` files.

    python training_scripts/plot_drift.py --result v1=v1_30s.json --result v2=v2_30s.json --output drift.png

Each result's per-window series (`identity_colour_error_per_window`, `lip_sync_r_per_window`, one value per
`drift_window_seconds`) becomes one line per panel; the legend gives the slope of the colour error.
"""

import argparse
import json
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", action="append", required=True, metavar="LABEL=FILE",
                        help="a label and an evaluation JSON (repeat for several models)")
    parser.add_argument("--output", required=True, help="the PNG to write")
    parser.add_argument("--title", default="SyncDreamer-Tiny on held-out clips of the synthetic world")
    args = parser.parse_args(argv)
    for item in args.result:
        if "=" not in item:
            parser.error(f"--result {item!r} must look like LABEL=FILE.")
    return args


def main(argv=None):
    args = parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (colour_axis, sync_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for item in args.result:
        label, _, path = item.partition("=")
        results = json.loads(Path(path).read_text())
        window = results["settings"]["drift_window_seconds"]
        colour = [error * 255 for error in results["identity_colour_error_per_window"]]
        times = [(index + 0.5) * window for index in range(len(colour))]
        slope = results["identity_colour_slope_per_second"] * 255
        colour_axis.plot(times, colour, marker=".", label=f"{label} (slope {slope:+.2f}/255 per s)")
        sync = results["lip_sync_r_per_window"]
        sync_axis.plot([t for t, r in zip(times, sync) if r is not None], [r for r in sync if r is not None],
                       marker=".", label=f"{label} (whole clips r {results['lip_sync_r']:.2f})")
    clips = results["settings"]["n_clips"]
    colour_axis.set(xlabel="time (s)", ylabel="identity colour error (/255)",
                    title=f"colour error per {window:g}-s window ({clips} clips)")
    sync_axis.set(xlabel="time (s)", ylabel="lip-sync r", title=f"lip-sync r per {window:g}-s window", ylim=(-0.2, 1.0))
    for axis in (colour_axis, sync_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(args.title, fontsize=10)
    figure.tight_layout()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
