"""evaluate_mapping: plays a long synthetic walk with loops through WorldMap and scores the trajectory with evo.

    evaluate_mapping                                   # perfect and noisy backends, with and without loop closure
    evaluate_mapping --backend demo                    # the embedded demo model on a short rendered walk (CPU, slow)
    evaluate_mapping --distance 30 --output /tmp/eval  # a shorter walk

Writes `mapping_evaluation.md` (the table and the targets) and `mapping_topdown.png` (estimated vs true paths,
seen from above, with the map cloud) to the output folder, and prints the table. See docs/mapping_evaluation.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from g2vlm_ros.mapping.evaluation import MapRun, RunScores, play_through_map, score_baselines, score_run
from g2vlm_ros.mapping.simulation import (
    SimulatedSequence,
    WalkSettings,
    WindowingSettings,
    assemble_windows,
    simulate_walk,
    summarize,
)

SIMULATED_BACKENDS = ("perfect", "noisy")
# Targets of issue 15 (metres / percent of the distance walked / factor over standing still).
PERFECT_ATE_M = 0.001
NOISY_ATE_PERCENT = 1.0
NOISY_LOOP_ATE_PERCENT = 0.3
DEMO_FACTOR = 5.0


@dataclass
class Evaluation:
    sequence: SimulatedSequence
    runs: list[MapRun]
    rows: list[RunScores]
    loop_closure: dict[str, bool]  # run label -> loop closure on
    description: str


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="evaluate_mapping", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("simulated", "perfect", "noisy", "demo"), default="simulated",
                        help="simulated: perfect and noisy (default); demo: the embedded demo model on the CPU")
    parser.add_argument("--distance", type=float, default=230.0, help="metres walked by the simulated walk")
    parser.add_argument("--loop-closure", choices=("both", "on", "off"), default="both")
    parser.add_argument("--window-size", type=int, default=4, help="K: the last K-1 keyframes plus the newest set")
    parser.add_argument("--keyframe-motion", type=float, default=0.4, help="metres between keyframes")
    parser.add_argument("--seed", type=int, default=0, help="the noise and gauges of the simulated backends")
    parser.add_argument("--demo-views", type=int, default=8, help="views of the demo room (one pass)")
    parser.add_argument("--demo-passes", type=int, default=3, help="forwards, backwards, forwards, ...")
    parser.add_argument("--output", type=Path, default=Path("mapping_evaluation"), help="folder for table and plot")
    parser.add_argument("--no-cloud", action="store_true", help="leave the map cloud out of the plot")
    return parser.parse_args(argv)


def evaluate(args: argparse.Namespace, log=print) -> Evaluation:
    windowing = WindowingSettings(window_size=args.window_size, keyframe_min_motion_m=args.keyframe_motion)
    if args.backend == "demo":
        from g2vlm_ros.mapping.demo_walk import DemoModelBackend, render_demo_walk

        sequence, images = render_demo_walk(args.demo_views, args.demo_passes)
        backends = [DemoModelBackend(images)]
        description = (f"one rendered room (g2vlm_ros.training.scenes), {args.demo_views} views walked "
                       f"{args.demo_passes} times alternately forwards and backwards")
    else:
        from g2vlm_ros.mapping.simulated_backends import noisy_backend, perfect_backend

        sequence = simulate_walk(WalkSettings(distance_m=args.distance))
        names = SIMULATED_BACKENDS if args.backend == "simulated" else (args.backend,)
        factories = {"perfect": perfect_backend, "noisy": noisy_backend}
        backends = [factories[name](sequence, seed=args.seed) for name in names]
        description = "a floor plan of four rooms around a central block (g2vlm_ros.mapping.simulation)"
    windows = assemble_windows(sequence, windowing)
    if not windows:
        raise ValueError("the walk gives no window: make it longer than the window size")
    summary = summarize(sequence, windows)
    legs = ", ".join(f"{mode} {metres:.0f} m" for mode, metres in summary.mode_distance_m.items() if metres > 0)
    description += (f": {summary.distance_m:.1f} m walked ({legs}), {summary.frames} frames, "
                    f"{summary.keyframes} keyframes, {summary.windows} windows of {args.window_size}")
    log(description)
    switches = {"both": (False, True), "on": (True,), "off": (False,)}[args.loop_closure]
    runs, rows, loop_closure = [], [], {}
    for backend in backends:
        for closing in switches:
            label = f"{backend.name} {'+ loops' if closing else ''}".strip()
            started = time.perf_counter()
            run = play_through_map(sequence, windows, backend, closing, label=label, keep_cloud=not args.no_cloud)
            log(f"{label}: {len(windows)} windows in {time.perf_counter() - started:.1f} s, "
                f"{dict(run.statuses)}, loops {run.loops_accepted}/{run.loop_requests} ({run.wide_loops} wide)")
            runs.append(run)
            loop_closure[label] = closing
            rows += score_run(sequence, run)
        standing_still, before = score_baselines(sequence, runs[-1], backend.name)
        rows += [before] if any(row.trajectory == "standing still" for row in rows) else [standing_still, before]
    return Evaluation(sequence, runs, rows, loop_closure, description)


def _percent(part: Optional[float]) -> str:
    return "-" if part is None else f"{100.0 * part:.0f} %"


def _format_direction(row: RunScores) -> str:
    scores = row.scores
    if scores.direction_correct is None:
        return "-"
    return f"{_percent(scores.direction_correct)} of {scores.direction_steps}"


def markdown_table(evaluation: Evaluation) -> str:
    header = ("| backend | trajectory | poses | ATE (m) | ATE (% of distance) | RPE per keyframe step (m / deg) "
              "| scale per 10 m or 1/4 of the walk (min - max) | backward steps the right way | loops accepted "
              "| mapping ms per window (median) |\n|---|---|---|---|---|---|---|---|---|---|")
    runs = {run.label: run for run in evaluation.runs}
    lines = [header]
    for row in evaluation.rows:
        s = row.scores
        run = runs.get(row.label) if row.trajectory in ("map", "online") else None
        loops = "-"
        if run is not None and evaluation.loop_closure.get(row.label):
            loops = f"{run.loops_accepted} of {run.loop_requests} ({run.wide_loops} wide)"
        timing = f"{np.median(run.mapping_ms):.1f}" if run is not None and run.mapping_ms else "-"
        lines.append(f"| {row.label} | {row.trajectory} | {s.poses} | {s.ate_rmse:.4g} | {s.ate_percent:.3g} | "
                     f"{s.rpe_translation:.3g} / {s.rpe_rotation_deg:.3g} | {s.scale_min:.3f} - {s.scale_max:.3f} | "
                     f"{_format_direction(row)} | {loops} | {timing} |")
    return "\n".join(lines)


def target_lines(evaluation: Evaluation) -> list[str]:
    """Each applicable target of issue 15 with the measured figure and PASS / MISS."""
    lines = []
    by_key = {(row.label, row.trajectory): row.scores for row in evaluation.rows}
    still = next((row.scores for row in evaluation.rows if row.trajectory == "standing still"), None)

    def check(text: str, ok: bool) -> None:
        lines.append(f"- {'PASS' if ok else 'MISS'}: {text}")

    if ("perfect", "map") in by_key:
        ate = by_key[("perfect", "map")].ate_rmse
        check(f"perfect backend, ATE {ate * 1e3:.3g} mm <= {PERFECT_ATE_M * 1e3:g} mm", ate <= PERFECT_ATE_M)
    if ("noisy", "map") in by_key:
        percent = by_key[("noisy", "map")].ate_percent
        check(f"noisy backend without loop closure, ATE {percent:.3g} % <= {NOISY_ATE_PERCENT:g} % of distance",
              percent <= NOISY_ATE_PERCENT)
    if ("noisy + loops", "map") in by_key:
        run = next(run for run in evaluation.runs if run.label == "noisy + loops")
        percent = by_key[("noisy + loops", "map")].ate_percent
        check(f"noisy backend with loop closure, ATE {percent:.3g} % <= {NOISY_LOOP_ATE_PERCENT:g} % of distance "
              f"({run.loops_accepted} loops accepted of {run.loop_requests} verified, {run.wide_loops} wide)",
              percent <= NOISY_LOOP_ATE_PERCENT)
    for label in ("demo", "demo + loops"):
        if (label, "map") in by_key and still is not None:
            scores = by_key[(label, "map")]
            factor = still.ate_rmse / max(scores.ate_rmse, 1e-12)
            check(f"{label}: ATE {scores.ate_rmse:.3g} m, {factor:.2g}x better than standing still "
                  f"({still.ate_rmse:.3g} m), target >= {DEMO_FACTOR:g}x", factor >= DEMO_FACTOR)
            # Direction is judged on the odometry (the online trajectory: every window's newest camera), which is
            # what a reversing robot sees. The map keeps a keyframe only where the view is new, so a walk that
            # backs up over ground it has already mapped may leave no backward map step to judge. Chaining can
            # straighten a few wrong steps, so the model's own steps on backward windows must be right as well.
            online = by_key[(label, "online")]
            run = next(run for run in evaluation.runs if run.label == label)
            correct, total = run.window_direction
            check(f"{label}: direction of motion on backward segments right in {_percent(online.direction_correct)} "
                  f"of {online.direction_steps} odometry steps ({_percent(scores.direction_correct)} of "
                  f"{scores.direction_steps} map keyframe steps); the model's own newest step right in {correct} of "
                  f"{total} windows",
                  online.direction_correct is not None and online.direction_correct > 0.5
                  and (scores.direction_correct is None or scores.direction_correct > 0.5)
                  and 2 * correct > total)
    return lines


def write_report(evaluation: Evaluation, output: Path, command: str) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    stats = "\n".join(f"- {run.label}: {run.stats}" for run in evaluation.runs)
    text = (f"# Mapping evaluation\n\nCommand: `{command}`\n\nWalk: {evaluation.description}.\n\n"
            f"{markdown_table(evaluation)}\n\nTargets (issue 15):\n\n" + "\n".join(target_lines(evaluation))
            + f"\n\nMap statistics at the end of each run:\n\n{stats}\n")
    path = output / "mapping_evaluation.md"
    path.write_text(text)
    return path


def plot_topdown(evaluation: Evaluation, output: Path, with_cloud: bool = True) -> Path:
    """One panel per run: the true path, the map's keyframes and the before behaviour, Sim3-aligned, from above
    (x to the right, z up the page: with y pointing down that is the view from above)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = evaluation.runs
    fig, axes = plt.subplots(1, len(runs), figsize=(6.0 * len(runs), 5.0), squeeze=False)
    rows = {(row.label, row.trajectory): row.scores for row in evaluation.rows}
    for axis, run in zip(axes[0], runs, strict=True):
        scores = rows[(run.label, "map")]
        if with_cloud and run.cloud is not None and len(run.cloud[0]):
            points, colors = run.cloud
            aligned = points.astype(np.float64) @ scores.alignment[:3, :3].T + scores.alignment[:3, 3]
            keep = np.random.default_rng(0).permutation(len(aligned))[:40_000]
            # walls and furniture only (y points down): the ceiling would hide the rooms, the floor blurs them
            keep = keep[(aligned[keep, 1] > -2.0) & (aligned[keep, 1] < -0.1)]
            axis.scatter(aligned[keep, 0], aligned[keep, 2], s=0.2, c=colors[keep] / 255.0, alpha=0.4, lw=0)
        before = rows.get((run.label.replace(" + loops", ""), "before"))
        if before is not None:
            axis.plot(before.aligned_positions[:, 0], before.aligned_positions[:, 2], color="0.6", lw=0.6,
                      label=f"before (ATE {before.ate_rmse:.2g} m)")
        axis.plot(scores.true_positions[:, 0], scores.true_positions[:, 2], color="black", lw=1.2, label="true")
        axis.plot(scores.aligned_positions[:, 0], scores.aligned_positions[:, 2], color="tab:red", lw=0.9,
                  label=f"map (ATE {scores.ate_rmse:.2g} m, {scores.ate_percent:.2g} %)")
        low, high = scores.true_positions.min(axis=0) - 4.0, scores.true_positions.max(axis=0) + 4.0
        axis.set_xlim(low[0], high[0])
        axis.set_ylim(low[2], high[2])
        axis.set_title(run.label)
        axis.set_aspect("equal")
        axis.set_xlabel("x (m)")
        axis.set_ylabel("z (m)")
        axis.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    path = output / "mapping_topdown.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        evaluation = evaluate(args)
    except ValueError as error:
        print(f"evaluate_mapping: {error}", file=sys.stderr)
        return 2
    command = "evaluate_mapping " + " ".join(sys.argv[1:] if argv is None else argv)
    report = write_report(evaluation, args.output, command.strip())
    plot = plot_topdown(evaluation, args.output, with_cloud=not args.no_cloud)
    print(markdown_table(evaluation))
    print("\n".join(target_lines(evaluation)))
    print(f"wrote {report} and {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
