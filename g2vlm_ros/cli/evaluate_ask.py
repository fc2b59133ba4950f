"""Scores /g2vlm/ask's answerers on questions with exact truth (`python -m g2vlm_ros.cli.evaluate_ask`).

Scenes: procedural rooms of g2vlm_ros.training.scenes, ray-cast exactly (4 keyframes of one camera named "camera",
0.5 s apart, 320x240). The perfect-geometry backend is a GeometryResult made of the rendered truth: exact depth,
points and poses, with the window's world frame moved to the first view's camera (as G2VLM's), so "up" is not
an axis of it, and a fixed metric scale of 1 m per unit. Truth comes from the scene itself: pixel depths, ranges and
points; heights from the room's floor (y = 0, gravity along +y); camera motion from the poses; box sizes from the
visible surface of a sphere (exact mask from its centre and radius) along the same axes as the answer; the
corridor ahead from the exact points with the floor known exactly (same corridor rule as the answerer).

Four groups: documented forms (README / docs/questions.md), paraphrases, object-referring questions without
grounding (the right answer is a refusal with a reason), structured JSON queries. Outcomes: correct (within
5 %, or 1 cm for values near zero, in the right unit, with the right yes/no), refused (with a reason), wrong (a
wrong number, or a number where a refusal was due).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch

from g2vlm_ros.backends.backend import GeometryResult
from g2vlm_ros.geometry.pinhole import backproject_depth
from g2vlm_ros.pipeline.scale_tracker import ScaleEstimate
from g2vlm_ros.reasoning.geometric import GeometricAnswerer
from g2vlm_ros.reasoning.measures import CLEARANCE, HEADROOM, OBSTACLE_RANK, extent_axes
from g2vlm_ros.reasoning.planner import DEFAULT_CORRIDOR_M, PlannerAnswerer
from g2vlm_ros.reasoning.query import METRES_PER_UNIT
from g2vlm_ros.reasoning.question import QuestionError
from g2vlm_ros.training.scenes import render_scenes, sample_scene

GROUPS = ("documented", "paraphrase", "object", "structured")
CAMERA = "camera"
VIEWS, HEIGHT, WIDTH, STEP_NS = 4, 240, 320, 500_000_000
TOLERANCE = 0.05
ABSOLUTE_TOLERANCE_M = 0.01  # for values near zero (a point on the floor is 0 m above it): 5 % or 1 cm


@dataclass(frozen=True)
class Case:
    group: str
    question: str
    truth: Optional[float]  # None: the question must be refused
    unit: str = "m"
    yes: Optional[bool] = None


@dataclass
class Scene:
    snapshot: object
    depth: np.ndarray  # [V,H,W] metres
    local: np.ndarray  # [V,H,W,3]
    points: np.ndarray  # [V,H,W,3] room frame (y down, floor y = 0)
    poses: np.ndarray  # [V,4,4] room frame
    sphere_box: Optional[tuple[int, int, int, int]]
    sphere_extent: tuple[float, float]


def _window_snapshot(depth, local, points, poses, intrinsics):
    to_window = np.linalg.inv(poses[0])  # the world frame of a G2VLM window: the first view's camera
    world = points @ to_window[:3, :3].T + to_window[:3, 3]
    result = GeometryResult(depth=torch.from_numpy(depth), local_points=torch.from_numpy(local.astype(np.float32)),
                            world_points=torch.from_numpy(world.astype(np.float32)),
                            camera_to_world=torch.from_numpy((to_window @ poses).astype(np.float32)),
                            intrinsics=torch.from_numpy(intrinsics), colors=torch.zeros(VIEWS, HEIGHT, WIDTH, 3),
                            metric=True)
    frames = [SimpleNamespace(camera=CAMERA, stamp_ns=10_000_000_000 + i * STEP_NS,
                              rgb=np.zeros((HEIGHT, WIDTH, 3), np.uint8)) for i in range(VIEWS)]
    return SimpleNamespace(window=SimpleNamespace(frames=frames), result=result,
                           scale=ScaleEstimate("fixed", 1.0))


def _sphere_box(spec, depth, points, pose) -> tuple[Optional[tuple[int, int, int, int]], tuple[float, float]]:
    """A sphere fully visible in the newest view with nothing nearer in its padded box, and its visible extent."""
    ranges = np.linalg.norm(points - pose[:3, 3], axis=-1)
    for centre, radius in zip(spec.sphere_centers, spec.sphere_radii, strict=True):
        mask = np.abs(np.linalg.norm(points - centre, axis=-1) - radius) < 1e-3
        if mask.sum() < 300:
            continue
        rows, columns = np.nonzero(mask)
        x0, x1 = max(columns.min() - 6, 0), min(columns.max() + 6, WIDTH - 1)
        y0, y1 = max(rows.min() - 6, 0), min(rows.max() + 6, HEIGHT - 1)
        if columns.min() < 2 or rows.min() < 2 or columns.max() > WIDTH - 3 or rows.max() > HEIGHT - 3:
            continue  # cut by the image border
        box = np.zeros_like(mask)
        box[y0:y1 + 1, x0:x1 + 1] = True
        others = box & ~mask & (points[..., 1] < -0.005)  # not the floor
        if np.any(ranges[others] < ranges[mask].max() * 1.05):
            continue
        surface = points[mask]
        across, vertical, _ = extent_axes(np.array([0.0, -1.0, 0.0]), pose[:3, 3], surface.mean(axis=0), pose[:3, :3])
        extent = (float(np.ptp(surface @ across)), float(np.ptp(surface @ vertical)))
        return (int(x0), int(y0), int(x1), int(y1)), extent
    return None, (0.0, 0.0)


def make_scene(seed: int) -> Scene:
    batch = render_scenes(1, VIEWS, HEIGHT, WIDTH, seed=seed)
    spec = sample_scene(seed, 0, VIEWS)
    depth, points = batch.depth[0].numpy(), batch.points[0].numpy().astype(np.float64)
    poses, intrinsics = batch.camera_to_world[0].numpy().astype(np.float64), batch.intrinsics[0].numpy()
    local = np.stack([backproject_depth(depth[i], intrinsics[i].astype(np.float64)) for i in range(VIEWS)])
    box, extent = _sphere_box(spec, depth[-1], points[-1], poses[-1])
    return Scene(_window_snapshot(depth, local, points, poses, intrinsics), depth, local, points, poses, box, extent)


def corridor_truth(scene: Scene, width: float) -> tuple[float, float]:
    """(free distance along the heading, horizontal distance to the nearest obstacle) with the exact floor."""
    pose = scene.poses[-1]
    forward = pose[:3, 2].copy()
    forward[1] = 0.0
    forward /= np.linalg.norm(forward)
    lateral = np.cross(np.array([0.0, -1.0, 0.0]), forward)
    relative = scene.points.reshape(-1, 3) - pose[:3, 3]
    heights, camera_height = -scene.points.reshape(-1, 3)[:, 1], -pose[1, 3]
    along = relative @ forward
    inside = (along > 0) & (np.abs(relative @ lateral) <= width / 2)
    obstacle = inside & (heights > CLEARANCE * camera_height) & (heights < HEADROOM * camera_height)
    horizontal = np.hypot(along[obstacle], (relative @ lateral)[obstacle])
    rank = min(OBSTACLE_RANK, int(obstacle.sum())) - 1
    return float(np.sort(along[obstacle])[rank]), float(np.sort(horizontal)[rank])


def cases_for(scene: Scene) -> list[Case]:
    v = VIEWS - 1
    p1, p2, p3 = (WIDTH // 2, HEIGHT // 2), (WIDTH // 4, 3 * HEIGHT // 4), (3 * WIDTH // 4, HEIGHT // 4)

    def depth(p):
        return float(scene.depth[v, p[1], p[0]])

    def rng(p):
        return float(np.linalg.norm(scene.local[v, p[1], p[0]]))

    def world(p):
        return scene.points[v, p[1], p[0]]

    def height(p):
        return float(-world(p)[1])

    between = float(np.linalg.norm(world(p1) - world(p3)))
    moved = float(np.linalg.norm(scene.poses[v, :3, 3] - scene.poses[0, :3, 3]))
    moved_1s = float(np.linalg.norm(scene.poses[v, :3, 3] - scene.poses[v - 2, :3, 3]))
    free, nearest = corridor_truth(scene, DEFAULT_CORRIDOR_M)
    _, nearest_08 = corridor_truth(scene, 0.8)
    camera_height = float(-scene.poses[v, 1, 3])
    x0, y0, x1, y1 = scene.sphere_box
    width, tall = scene.sphere_extent
    box = f"[{x0}, {y0}, {x1}, {y1}]"
    near = min(rng(p1), rng(p2))
    yes_free = 0.7 * free
    no_free = 1.3 * free

    def fmt(p):
        return f"({p[0]}, {p[1]})"

    documented = [
        Case("documented", f"What is the depth at {fmt(p1)}?", depth(p1)),
        Case("documented", f"How far is {fmt(p2)}?", rng(p2)),
        Case("documented", f"Distance between {fmt(p1)} and {fmt(p3)}?", between),
        Case("documented", f"Which is closer, {fmt(p1)} or {fmt(p2)}?", near),
        Case("documented", f"How much higher is {fmt(p3)} than {fmt(p2)}?", height(p3) - height(p2)),
        Case("documented", "How much free space is straight ahead?", free),
        Case("documented", "How far did camera move?", moved),
        Case("documented", f"How wide is {box}?", width),
        Case("documented", f"How tall is {box}?", tall),
        Case("documented", f"How high above the floor is {fmt(p2)}?", height(p2)),
    ]
    paraphrases = [
        Case("paraphrase", f"How far is {fmt(p1)} in centimetres?", rng(p1) * 100, "cm"),
        Case("paraphrase", f"depth at x={p2[0]} y={p2[1]}", depth(p2)),
        Case("paraphrase", f"what's the distance to the thing at pixel {p3[0]},{p3[1]}", rng(p3)),
        Case("paraphrase", f"dpeth at {fmt(p1)}", depth(p1)),
        Case("paraphrase", f"How far away is [{p2[0]}, {p2[1]}] in feet?", rng(p2) / 0.3048, "ft"),
        Case("paraphrase", f"Is there at least {yes_free:.2f} m of free space ahead?", free, yes=True),
        Case("paraphrase", f"Is there at least {no_free:.2f} m of free space ahead?", free, yes=False),
        Case("paraphrase", "how much did the camera move in the last second", moved_1s),
        Case("paraphrase", f"How wide is the ball in {box}?", width),
        Case("paraphrase", f"How far is {fmt(p1)} in front?", rng(p1)),
        Case("paraphrase", f"how high above the ground is {fmt(p1)} in mm", height(p1) * 1000, "mm"),
        Case("paraphrase", f"Is {fmt(p2)} closer than {rng(p2) * 1.3:.2f} m?", rng(p2), yes=True),
        Case("paraphrase", "What's the nearest obstacle ahead?", nearest),
        Case("paraphrase", "How high is the camera above the floor?", camera_height),
    ]
    objects = [Case("object", question, None) for question in (
        "How far did the ball move?", "How much space is in front of the pink box?", "How wide is the ball?",
        "How far away is the chair?", "How high is the sphere above the floor?",
        "Which is closer, the ball or the box?", f"What is the distance from {fmt(p1)} to the red ball?",
        "Is there free space in front of the table?")]

    def structured(query: dict, truth: float, unit: str = "m", yes: Optional[bool] = None) -> Case:
        return Case("structured", json.dumps(query), truth, unit, yes)

    structure = [
        structured({"form": "depth", "pixels": [list(p1)]}, depth(p1)),
        structured({"form": "distance", "pixels": [list(p2)], "unit": "cm"}, rng(p2) * 100, "cm"),
        structured({"form": "box_width", "box": [x0, y0, x1 - x0, y1 - y0], "box_format": "xywh"}, width),
        structured({"form": "box_height", "box": [x0, y0, x1, y1], "box_format": "xyxy"}, tall),
        structured({"form": "height_difference", "pixels": [list(p3), list(p2)]}, height(p3) - height(p2)),
        structured({"form": "free_space_check", "threshold": round(yes_free, 2)}, free, yes=True),
        structured({"form": "camera_motion", "time_span_s": 1.0}, moved_1s),
        structured({"form": "height_above_floor"}, camera_height),
        structured({"form": "nearest_obstacle", "corridor_width": 0.8}, nearest_08),
    ]
    return documented + paraphrases + objects + structure


def score(case: Case, ask: Callable[[str], object]) -> tuple[str, str]:
    """(outcome, detail): correct | refused | wrong."""
    try:
        answer = ask(case.question)
    except QuestionError as error:
        return ("refused", str(error)) if str(error).strip() else ("wrong", "refused without a reason")
    if case.truth is None:
        return "wrong", f"answered {answer.value:g} {answer.unit}: {answer.answer}"
    allowed = max(TOLERANCE * abs(case.truth), ABSOLUTE_TOLERANCE_M / METRES_PER_UNIT.get(case.unit, 1.0))
    good = answer.unit == case.unit and abs(answer.value - case.truth) <= allowed
    if case.yes is not None:
        good = good and answer.answer.lower().startswith("yes" if case.yes else "no")
    detail = f"{answer.value:g} {answer.unit} vs truth {case.truth:g} {case.unit}: {answer.answer}"
    return ("correct" if good else "wrong"), detail


def scenes(count: int, first_seed: int = 0) -> list[Scene]:
    """The first `count` scenes (seeds from `first_seed`) whose newest view shows a sphere clearly."""
    found, seed = [], first_seed
    while len(found) < count and seed < first_seed + 50 * count:
        scene = make_scene(seed)
        seed += 1
        if scene.sphere_box is not None:
            found.append(scene)
    return found


def evaluate(answerer: str, scene_list: list[Scene], verbose: bool = False) -> dict[str, dict[str, int]]:
    table = {group: {"questions": 0, "answered": 0, "correct": 0, "refused": 0, "wrong": 0} for group in GROUPS}
    for scene in scene_list:
        if answerer == "before":
            old = GeometricAnswerer()

            def ask(question, old=old, scene=scene):
                answer = old.answer(question, [CAMERA], scene.snapshot, 10.0)
                return answer
        else:
            new = PlannerAnswerer()

            def ask(question, new=new, scene=scene):
                return new.answer(question, [CAMERA], scene.snapshot, 10.0)
        for case in cases_for(scene):
            outcome, detail = score(case, ask)
            row = table[case.group]
            row["questions"] += 1
            row[outcome] += 1
            row["answered"] += outcome != "refused"
            if verbose and (outcome == "wrong" or (outcome == "refused" and case.truth is not None)):
                print(f"  [{case.group}] {outcome}: {case.question} -> {detail[:300]}")
    return table


def format_table(title: str, table: dict[str, dict[str, int]]) -> str:
    lines = [f"{title}", "| group | questions | answered | correct (5 %) | refused clearly | wrong |",
             "|---|---|---|---|---|---|"]
    for group, row in table.items():
        lines.append(f"| {group} | {row['questions']} | {row['answered']} | {row['correct']} | {row['refused']} | "
                     f"{row['wrong']} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=6, help="number of rendered scenes (31 questions each)")
    parser.add_argument("--seed", type=int, default=0, help="first scene seed")
    parser.add_argument("--answerer", choices=("before", "after", "both"), default="both",
                        help="before: the GeometricAnswerer; after: the PlannerAnswerer")
    parser.add_argument("--verbose", action="store_true", help="print every wrong answer and every refusal of "
                                                                 "a question that has a truth")
    args = parser.parse_args(argv)
    start = time.monotonic()
    scene_list = scenes(args.scenes, args.seed)
    for name in (("before", "after") if args.answerer == "both" else (args.answerer,)):
        table = evaluate(name, scene_list, args.verbose)
        label = "GeometricAnswerer" if name == "before" else "PlannerAnswerer"
        print(format_table(f"\n{name} ({label}, {len(scene_list)} scenes)", table))
    print(f"\n{time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
