"""Loop closure for the keyframe map: find revisit candidates by global descriptor, then verify them geometrically.

Two steps, both pure functions of arrays (numpy only, no ROS, no torch), so the map can call them wherever it
keeps its keyframes:

1. `LoopDetector` keeps one global descriptor per keyframe and proposes, for the newest keyframe, older
   keyframes whose descriptor is similar (cosine), that are old enough to be a loop (not the last few keyframes
   or seconds, which chaining already links) and that are not implausibly far away given the drift odometry can
   have accumulated. Descriptors come from the model (`GeometryResult.descriptors`: mean-pooled DINO patch
   tokens); backends that cannot provide them leave None and the caller uses `image_descriptor`, a weaker
   appearance-only fallback. Similar appearance is never enough to accept a loop: repeated textures, identical
   rooms and corridors look alike.
2. `verify_loop` judges one candidate after the caller has run the model on the 2-view window
   [candidate image, current image]. All of these must hold:
   (a) scale: the candidate's depths in that window and its stored depths agree up to one scale;
   (b) geometry: the current view's points, moved into the candidate camera by the window's relative pose,
       land in the candidate image on the candidate's stored surface (enough overlap, enough inliers);
   (c) odometry: the pose correction the loop implies stays within the drift that chaining can have
       accumulated over the distance travelled since the candidate. This is what rejects a place that merely
       looks the same, including a perfect copy whose geometry also agrees.

Units: the map's (map units); thresholds on lengths are relative to the scene depth or to the distance travelled,
so they hold whether the map is metric or up to scale. Frames: camera optical frames (x right, y down, z forward);
poses are camera-to-frame 4x4 float64 matrices.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np

from g2vlm_ros.geometry.rotations import invert_rigid, rotation_angle_deg
from g2vlm_ros.pipeline.windowing import thumbnail

KeyframeKey = tuple[str, int]  # (camera name, stamp_ns), as in g2vlm_ros.mapping.world_map


@dataclass(frozen=True)
class LoopSettings:
    """Every threshold of loop detection and verification, with the reason for its value."""

    # --- candidates (descriptor search) ---
    # cosine similarity of *centred* descriptors (the database mean removed, see LoopDetector) a candidate must
    # reach. Mean-pooled DINO tokens share a large common component (raw cosine 0.95-1.0 for any two rendered
    # rooms with the demo model); centred, two views of one place scored median 0.95 (min 0.82) and views of other
    # places median -0.05 (95th percentile 0.78) on rendered rooms. A candidate only costs a model run:
    # verification, not this bar, keeps false loops out
    min_similarity: float = 0.85
    # the last keyframes before the current one are linked by chaining already; a loop must skip them
    min_keyframe_separation: int = 10
    # and so must anything seen in the last seconds (a robot turning on the spot re-sees recent keyframes)
    min_time_separation_s: float = 10.0
    # at most this many candidates per keyframe: each costs one model run on a 2-view window
    max_candidates: int = 3
    # a candidate farther from the current position estimate than the drift bound (c) plus this many scene depths
    # cannot be verified anyway (views that far apart hardly overlap): skip it before running the model
    search_radius_depths: float = 2.0

    # --- verification (a): scale ---
    # pixels of the verification window with lower confidence are ignored (the model says they are unreliable)
    min_confidence: float = 0.2
    # fewer valid pixels than this fraction of the candidate's grid: nothing reliable to compare
    min_valid_fraction: float = 0.2
    # robust relative spread (median absolute deviation / median) of the per-pixel depth ratios; the demo model's
    # depth error is ~12 % abs-rel per window, which gives a spread well below this for the same image, while a
    # depth map that does not belong to the stored one spreads far more
    max_scale_spread: float = 0.15

    # --- verification (b): geometric agreement ---
    # a projected point agrees with the stored depth when within this relative depth error (model noise + drift)
    depth_tolerance: float = 0.1
    # fraction of the current view's valid points that must land inside the candidate image: a loop needs
    # shared content, not just two views somewhere in the same map
    min_overlap: float = 0.3
    # fraction of those landing points that must agree with the candidate's stored surface
    min_inlier_fraction: float = 0.6

    # --- verification (c): plausibility against odometry ---
    # chaining drifts by a few percent of the distance travelled (the target without loops: 1 %); a
    # correction larger than this fraction of the distance travelled since the candidate is a false loop
    drift_fraction: float = 0.05
    # plus a floor for short loops and for the error of the verification window's own relative pose, as a
    # fraction of the candidate's median scene depth (the pose error of a 2-view window grows with the baseline,
    # which is at most about the scene depth for views that overlap)
    drift_floor_depths: float = 0.15
    # rotation drift: a floor (the model's relative rotation error, ~2-3 degrees for the demo model) ...
    rotation_floor_deg: float = 5.0
    # ... plus this much per scene depth travelled since the candidate
    rotation_drift_deg_per_depth: float = 0.5


#: the centred-similarity bar for `image_descriptor` (thumbnail + colour histogram): on rendered rooms two views of
#: one place scored median 0.93 (min 0.59), other places median -0.06 (95th percentile 0.45); it tolerates less
#: viewpoint change than the model's descriptor, so the bar is lower
IMAGE_DESCRIPTOR_MIN_SIMILARITY = 0.75


@dataclass(frozen=True)
class LoopCandidate:
    key: KeyframeKey  # the older keyframe that may be the same place
    similarity: float  # cosine similarity of the descriptors, in [-1, 1]
    keyframe_separation: int  # keyframes added between the candidate and the current one
    distance: float  # |candidate position - current position estimate|, map units


@dataclass(frozen=True)
class LoopCorrection:
    """How far the loop moves the current view from where chaining put it."""

    transform: np.ndarray  # [4,4] chained camera_to_map -> verified camera_to_map (left-multiplied)
    translation: float  # map units
    rotation_deg: float
    allowed_translation: float  # the drift bound (c) it was compared with, map units
    allowed_rotation_deg: float


@dataclass(frozen=True)
class LoopVerification:
    accepted: bool
    reason: str  # "accepted" or why not, readable in a log
    relative_pose: Optional[np.ndarray] = None  # [4,4] current camera in the candidate camera, map units
    inlier_fraction: float = 0.0  # check (b)
    overlap: float = 0.0  # check (b)
    correction: Optional[LoopCorrection] = None  # check (c)
    scale: float = float("nan")  # map units per verification-window unit, from the candidate's depths (a)
    scale_spread: float = float("nan")  # check (a)


@dataclass
class _Entry:
    key: KeyframeKey
    index: int  # insertion order
    position: np.ndarray  # [3] camera position in the map
    scene_depth: Optional[float]  # median depth, map units


class LoopDetector:
    """A database of keyframe descriptors. Keyframes are added in time order; the map owns their poses and
    points and tells the detector where a keyframe is when it adds it (positions move when the graph is
    optimized: call `update_position`).

    Similarities are cosines of descriptors with the database mean removed: what every view of this environment
    shares (the pooled features' common component, the building's colours) says nothing about the place, and
    removing it spreads the similarities so that one bar works for different models and environments. No loop is
    looked for before `min_keyframe_separation` keyframes exist, so the mean has that many samples at least."""

    def __init__(self, settings: LoopSettings = LoopSettings()):
        self.settings = settings
        self._entries: dict[KeyframeKey, _Entry] = {}
        self._descriptors = np.zeros((0, 0), np.float32)  # rows in the order of self._keys
        self._keys: list[KeyframeKey] = []
        self._added = 0

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: KeyframeKey, descriptor: np.ndarray, position_in_map: np.ndarray,
            scene_depth: Optional[float] = None) -> None:
        """Stores a keyframe. `scene_depth` (its median depth, map units) lets `candidates` skip keyframes too far
        away to be verified; without it only the descriptor and the separation decide."""
        if key in self._entries:
            raise ValueError(f"keyframe {key} is already in the loop database")
        row = normalized_descriptor(descriptor)
        if self._keys and row.shape[0] != self._descriptors.shape[1]:
            raise ValueError(f"descriptor has {row.shape[0]} values, the database {self._descriptors.shape[1]}: "
                             "model and image descriptors cannot be mixed (reset the map after a backend change)")
        position = _position(position_in_map)
        self._entries[key] = _Entry(key, self._added, position, scene_depth)
        self._descriptors = row[None] if not self._keys else np.vstack((self._descriptors, row[None]))
        self._keys.append(key)
        self._added += 1

    def update_position(self, key: KeyframeKey, position_in_map: np.ndarray) -> None:
        self._entries[key].position = _position(position_in_map)

    def remove(self, key: KeyframeKey) -> None:
        """Forgets a keyframe (e.g. when the map drops it to bound memory)."""
        index = self._keys.index(key)
        del self._entries[key], self._keys[index]
        self._descriptors = np.delete(self._descriptors, index, axis=0)

    def candidates(self, key: KeyframeKey, descriptor: np.ndarray, current_position: np.ndarray,
                   distance_travelled_since: Callable[[KeyframeKey], float],
                   min_similarity: Optional[float] = None) -> list[LoopCandidate]:
        """Older keyframes that may show the same place as the current keyframe `key`, best first.

        `key` need not be in the database yet (its separation counts from the newest keyframe added);
        `distance_travelled_since(candidate_key)` is the path length (map units) from that keyframe to now;
        `min_similarity` overrides the settings' bar (use IMAGE_DESCRIPTOR_MIN_SIMILARITY for image descriptors).
        """
        if not self._keys:
            return []
        settings = self.settings
        query = normalized_descriptor(descriptor)
        if query.shape[0] != self._descriptors.shape[1]:
            raise ValueError(f"descriptor has {query.shape[0]} values, the database {self._descriptors.shape[1]}")
        bar = settings.min_similarity if min_similarity is None else min_similarity
        current = self._entries[key].index if key in self._entries else self._added
        position = _position(current_position)
        mean = self._descriptors.mean(axis=0)
        centred = self._descriptors - mean
        centred /= np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
        query = query - mean
        query /= max(float(np.linalg.norm(query)), 1e-12)
        similarities = centred @ query
        found = []
        for row in np.argsort(-similarities):
            similarity = float(similarities[row])
            if similarity < bar:
                break  # sorted: nothing further can pass
            entry = self._entries[self._keys[row]]
            separation = current - entry.index
            if entry.key == key or separation < settings.min_keyframe_separation:
                continue
            if entry.key[0] == key[0] and (key[1] - entry.key[1]) * 1e-9 < settings.min_time_separation_s:
                continue  # stamps of one camera are comparable; across cameras the keyframe count decides
            distance = float(np.linalg.norm(entry.position - position))
            if entry.scene_depth is not None:
                travelled = max(0.0, float(distance_travelled_since(entry.key)))
                reach = (settings.drift_fraction * travelled
                         + (settings.drift_floor_depths + settings.search_radius_depths) * entry.scene_depth)
                if distance > reach:
                    continue
            found.append(LoopCandidate(entry.key, similarity, separation, distance))
            if len(found) == settings.max_candidates:
                break
        return found


def normalized_descriptor(descriptor: np.ndarray) -> np.ndarray:
    """[D] float32 with unit L2 norm; ValueError for anything that cannot be one."""
    row = np.asarray(descriptor, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(row)) if row.size else 0.0
    if row.size == 0 or not np.isfinite(norm) or norm < 1e-12:
        raise ValueError("a descriptor must be a non-empty, finite, non-zero vector")
    return row / norm


def image_descriptor(rgb: np.ndarray, size: int = 4, histogram_bins: int = 4) -> np.ndarray:
    """The fallback global descriptor when the backend provides none: appearance only, so weaker than the
    model's (no invariance to viewpoint beyond what a coarse thumbnail blurs away).

    [H,W,3] uint8 -> [size*size + bins^3] float32, unit L2 norm: the grey thumbnail with its mean removed and its
    contrast normalized (invariant to exposure changes), and a coarse joint colour histogram (square-rooted, so
    that cosine similarity is the Bhattacharyya coefficient), weighted twice as much as the thumbnail. On rendered
    rooms finer thumbnails (8x8, 16x16) decorrelated under a 7 degree turn (same-place similarity down to -0.5);
    4x4 with the histogram dominating kept views of one place apart from other places best.
    """
    grey = thumbnail(rgb, size).astype(np.float64).reshape(-1)
    grey -= grey.mean()
    spread = float(np.linalg.norm(grey))
    grey = grey / spread if spread > 1e-9 else grey  # a flat image keeps only its colour histogram
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 4096)))  # ~4k pixels are enough for 64 bins
    pixels = rgb[::step, ::step].reshape(-1, 3).astype(np.int64) * histogram_bins // 256
    bins = (pixels[:, 0] * histogram_bins + pixels[:, 1]) * histogram_bins + pixels[:, 2]
    histogram = np.bincount(bins, minlength=histogram_bins ** 3).astype(np.float64)
    histogram = np.sqrt(histogram / histogram.sum())
    return normalized_descriptor(np.concatenate((grey, 2.0 * histogram)))


def verify_loop(candidate_points: np.ndarray, candidate_to_map: np.ndarray, current_to_map_estimate: np.ndarray,
                distance_travelled: float, window_poses: np.ndarray, window_points: np.ndarray,
                window_confidence: Optional[np.ndarray] = None, candidate_intrinsics: Optional[np.ndarray] = None,
                settings: LoopSettings = LoopSettings()) -> LoopVerification:
    """Verifies one loop candidate from the model's output on the 2-view window [candidate image, current image].

    candidate_points: [h,w,3] the candidate keyframe's stored local points (its camera frame, map units; NaN, inf
        or depth <= 0 invalid); candidate_to_map: its [4,4] pose in the map.
    current_to_map_estimate: [4,4] the current view's pose in the map from chaining (odometry).
    distance_travelled: path length from the candidate to the current view, map units (>= 0).
    window_poses: [2,4,4] camera_to_window of the verification window (view 0 the candidate, 1 the current);
    window_points: [2,H,W,3] its local points (window unit); window_confidence: [2,H,W] in [0,1] or None.
    candidate_intrinsics: [3,3] pinhole of the candidate's stored grid; None: fitted to the stored points.
    The window's grid may differ from the stored one (another stride): it is sampled at the stored pixel centres.

    Returns a LoopVerification; `relative_pose` is the current camera in the candidate camera in map units, so
    the verified pose of the current view is candidate_to_map @ relative_pose.
    """
    stored = _points(candidate_points, "candidate_points")
    window_poses, window_points = np.asarray(window_poses, np.float64), np.asarray(window_points, np.float64)
    if window_poses.shape != (2, 4, 4) or window_points.ndim != 4 or window_points.shape[:1] != (2,) \
            or window_points.shape[3] != 3:
        raise ValueError(f"the verification window must have 2 views: poses {window_poses.shape}, "
                         f"points {window_points.shape}")
    if not np.isfinite(distance_travelled) or distance_travelled < 0:
        raise ValueError(f"distance_travelled must be finite and >= 0, got {distance_travelled}")
    height, width = stored.shape[:2]
    stored_depth = stored[..., 2]
    stored_valid = _valid(stored)
    if stored_valid.mean() < settings.min_valid_fraction:
        return LoopVerification(False, "the candidate keyframe has too few valid points")
    scene_depth = float(np.median(stored_depth[stored_valid]))

    window_valid = _valid(window_points)
    if window_confidence is not None:
        window_valid &= np.asarray(window_confidence) >= settings.min_confidence

    # (a) one scale between the window's depth of the candidate and its stored depth
    rows, cols = _sample_grid(window_points.shape[1:3], (height, width))
    window_candidate = window_points[0][rows][:, cols]
    both = stored_valid & window_valid[0][rows][:, cols]
    if both.mean() < settings.min_valid_fraction:
        return LoopVerification(False, f"too few valid pixels to compare depths ({both.mean():.0%})")
    ratios = stored_depth[both] / window_candidate[..., 2][both]
    scale = float(np.median(ratios))
    spread = float(np.median(np.abs(ratios / scale - 1.0)))
    window_relative = np.linalg.inv(window_poses[0]) @ window_poses[1]
    relative_pose = np.eye(4)
    relative_pose[:3, :3] = _orthonormal(window_relative[:3, :3])
    relative_pose[:3, 3] = scale * window_relative[:3, 3]
    measured = dict(relative_pose=relative_pose, scale=scale, scale_spread=spread)
    if spread > settings.max_scale_spread:
        return LoopVerification(False, f"inconsistent scale: spread {spread:.3f} > {settings.max_scale_spread}",
                                **measured)

    # (b) the current view's points on the candidate's stored surface
    current = window_points[1][window_valid[1]] * scale  # map units, current camera frame
    in_candidate = current @ relative_pose[:3, :3].T + relative_pose[:3, 3]
    k = _fit_pinhole(stored, stored_valid) if candidate_intrinsics is None else np.asarray(candidate_intrinsics)
    inlier_fraction, overlap = _surface_agreement(in_candidate, k, stored_depth, stored_valid,
                                                  settings.depth_tolerance)
    measured.update(inlier_fraction=inlier_fraction, overlap=overlap)

    # (c) the correction against the chained estimate, bounded by the drift possible over the distance travelled
    verified = np.asarray(candidate_to_map, np.float64) @ relative_pose
    estimate = np.asarray(current_to_map_estimate, np.float64)
    transform = verified @ invert_rigid(estimate)
    correction = LoopCorrection(
        transform=transform, translation=float(np.linalg.norm(verified[:3, 3] - estimate[:3, 3])),
        rotation_deg=rotation_angle_deg(verified[:3, :3] @ estimate[:3, :3].T),
        allowed_translation=settings.drift_fraction * distance_travelled + settings.drift_floor_depths * scene_depth,
        allowed_rotation_deg=settings.rotation_floor_deg
        + settings.rotation_drift_deg_per_depth * distance_travelled / scene_depth)
    measured["correction"] = correction

    if overlap < settings.min_overlap:
        return LoopVerification(False, f"too little overlap: {overlap:.2f} < {settings.min_overlap}", **measured)
    if inlier_fraction < settings.min_inlier_fraction:
        return LoopVerification(False, f"geometry disagrees: inliers {inlier_fraction:.2f} < "
                                       f"{settings.min_inlier_fraction}", **measured)
    if correction.translation > correction.allowed_translation:
        return LoopVerification(False, f"implausible against odometry: correction {correction.translation:.3g} > "
                                       f"drift bound {correction.allowed_translation:.3g} map units", **measured)
    if correction.rotation_deg > correction.allowed_rotation_deg:
        return LoopVerification(False, f"implausible against odometry: rotation correction "
                                       f"{correction.rotation_deg:.1f} > {correction.allowed_rotation_deg:.1f} deg",
                                **measured)
    return LoopVerification(True, "accepted", **measured)


# ----------------------------------------------------------------------------------------------------------------


def _points(points: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(points, np.float64)
    if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 2:
        raise ValueError(f"{name} must be [h,w,3] with h, w >= 2, got {array.shape}")
    return array


def _position(position: np.ndarray) -> np.ndarray:
    array = np.asarray(position, np.float64).reshape(-1)
    if array.shape != (3,) or not np.isfinite(array).all():
        raise ValueError(f"a position must be 3 finite numbers, got {position!r}")
    return array


def _valid(points: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(points).all(axis=-1) & (points[..., 2] > 0)


def _sample_grid(source: tuple[int, int], target: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the source grid's cells nearest to the target grid's cell centres (both cover one image)."""
    def axis(n_source: int, n_target: int) -> np.ndarray:
        centres = (np.arange(n_target) + 0.5) * n_source / n_target - 0.5
        return np.clip(np.rint(centres).astype(np.int64), 0, n_source - 1)

    return axis(source[0], target[0]), axis(source[1], target[1])


def _fit_pinhole(points: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Least-squares fx, cx (from u = fx x/z + cx) and fy, cy of a grid of local points, pixel centres at
    integer coordinates. The model's local points follow a pinhole closely; a fit needs no stored intrinsics."""
    rows, cols = np.nonzero(valid)
    z = points[rows, cols, 2]
    k = np.eye(3)
    for axis, pixel in ((0, cols), (1, rows)):
        design = np.stack((points[rows, cols, axis] / z, np.ones_like(z)), axis=1)
        (focal, centre), *_ = np.linalg.lstsq(design, pixel.astype(np.float64), rcond=None)
        k[axis, axis], k[axis, 2] = focal, centre
    return k


def _surface_agreement(points: np.ndarray, k: np.ndarray, depth: np.ndarray, valid: np.ndarray,
                       tolerance: float) -> tuple[float, float]:
    """(inlier fraction, overlap) of `points` (candidate camera frame) against the candidate's depth map:
    overlap = share of the points that project in front of the camera onto a valid stored pixel; inliers = share
    of those whose depth is within `tolerance` (relative) of the stored depth. A point in front of the stored
    surface contradicts it (free space); one behind may be occluded, but a true revisit has few of either."""
    if len(points) == 0:
        return 0.0, 0.0
    z = points[:, 2]
    front = z > 1e-9
    u = np.full(len(points), -1, np.int64)
    v = np.full(len(points), -1, np.int64)
    u[front] = np.rint(k[0, 0] * points[front, 0] / z[front] + k[0, 2]).astype(np.int64)
    v[front] = np.rint(k[1, 1] * points[front, 1] / z[front] + k[1, 2]).astype(np.int64)
    inside = front & (u >= 0) & (u < depth.shape[1]) & (v >= 0) & (v < depth.shape[0])
    inside[inside] = valid[v[inside], u[inside]]
    landing = int(inside.sum())
    if landing == 0:
        return 0.0, 0.0
    surface = depth[v[inside], u[inside]]
    inliers = np.abs(z[inside] - surface) <= tolerance * surface
    return float(inliers.mean()), landing / len(points)


def _orthonormal(rotation: np.ndarray) -> np.ndarray:
    """The nearest rotation (SVD), so that a pose from float32 model output stays a proper rotation."""
    u, _, vt = np.linalg.svd(rotation)
    fixed = u @ vt
    if np.linalg.det(fixed) < 0:
        u[:, -1] *= -1
        fixed = u @ vt
    return fixed
