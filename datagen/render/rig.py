"""The 7-view camera rig and its sun lights around an object normalised to the unit cube at the origin.

World frame: glTF's (x right, y up, z towards the viewer of the "front"), metres. Azimuth is measured about +y
from +z towards +x, elevation up from the xz plane, both in degrees. View 0 is frontal (azimuth 0); views 1–6
go around at azimuths ``ring_start + 60·k`` with elevations alternating ``ring_elevations`` (Zero123++'s
layout: 30°, 90°, … at +20° / −10°).

Stored convention (``"convention": "opencv_c2w"``): ``pose`` is camera-to-world 4×4 with the OpenCV camera
axes (x right, y down, z forward); ``K`` is 3×3 in pixels with the pixel-corner origin used by the boxes of
shard format v1 (pixel (u, v) covers [u, u+1) × [v, v+1), so a centred principal point is (W/2, H/2)). A world
point X projects to ``K @ (inv(pose) @ [X, 1])[:3]`` (then divide by z). OpenGL/Blender cameras (x right, y up,
z backward) are ``pose @ diag(1, -1, -1, 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from datagen.params import Params

CONVENTION = "opencv_c2w"
N_VIEWS = 7
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])


class CameraParams(Params):
    resolution: int = Field(512, ge=16)  # square frames, pixels
    focal_mm: float = 35.0  # objaverse-xl's lens on a 32 mm sensor: ≈ 49.1° field of view
    sensor_mm: float = 32.0
    distance: float | None = None  # metres from the origin; None = fit the object's bounding sphere (below)
    fill: float = Field(0.9, gt=0, le=1)  # with distance None: the sphere spans this fraction of the half-frame
    signed = ("front_elevation", "ring_start", "ring_elevations")  # angles in degrees
    front_elevation: float = 0.0  # view 0
    ring_start: float = 30.0  # azimuth of view 1; views 1–6 are 60° apart
    ring_elevations: tuple[float, float] = (20.0, -10.0)  # alternating, views 1, 3, 5 then 2, 4, 6
    azimuth_jitter: float = Field(0.0, ge=0)  # ± degrees per view, drawn from the unit's seed
    elevation_jitter: float = Field(0.0, ge=0)
    near: float = 0.01
    far: float = 100.0


class LightParams(Params):
    """Sun lights from random directions of the upper hemisphere (objaverse-xl uses four) plus ambient light."""

    suns: int = Field(3, ge=0)
    sun_intensity: float = 1.0  # irradiance of each sun as a fraction of what lights a facing white surface fully
    intensity_jitter: float = Field(0.3, ge=0, lt=1)  # each sun × U(1 − j, 1 + j)
    signed = ("min_elevation",)
    min_elevation: float = 15.0  # degrees above the horizon
    ambient: float = 0.45  # uniform light, fraction of full


@dataclass(frozen=True)
class View:
    azimuth: float  # degrees
    elevation: float  # degrees
    distance: float  # metres from the origin (the object's centre)
    pose: np.ndarray  # 4×4 camera-to-world, OpenCV axes
    K: np.ndarray  # 3×3 pixels

    def fields(self) -> dict:
        """What ``Frame.fields["view"]`` stores (angles in degrees)."""
        return {"azimuth": self.azimuth, "elevation": self.elevation, "distance": self.distance,
                "pose": self.pose.tolist(), "K": self.K.tolist(), "convention": CONVENTION}


@dataclass(frozen=True)
class Sun:
    direction: np.ndarray  # unit vector the light travels along (from the sky towards the origin)
    intensity: float  # fraction of full irradiance


def intrinsics(p: CameraParams) -> np.ndarray:
    f = p.focal_mm / p.sensor_mm * p.resolution
    c = p.resolution / 2.0
    return np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])


def half_fov(p: CameraParams) -> float:
    """Half the field of view, radians."""
    return math.atan(p.sensor_mm / (2.0 * p.focal_mm))


def fit_distance(radius: float, p: CameraParams) -> float:
    """Distance at which a sphere of ``radius`` about the origin spans ``fill`` of the half-frame.

    The sphere's silhouette is the cone of half-angle asin(r/d); it must fit inside atan(fill·tan(fov/2)).
    """
    return radius / math.sin(math.atan(p.fill * math.tan(half_fov(p))))


def look_at(eye: np.ndarray, target: np.ndarray | None = None, up: np.ndarray | None = None) -> np.ndarray:
    """Camera-to-world pose (OpenCV axes) of a camera at ``eye`` looking at ``target`` with world ``up``."""
    target = np.zeros(3) if target is None else target
    up = np.array([0.0, 1.0, 0.0]) if up is None else up
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, z, eye
    return pose


def direction(azimuth: float, elevation: float) -> np.ndarray:
    """Unit vector from the origin towards azimuth/elevation (degrees)."""
    az, el = math.radians(azimuth), math.radians(elevation)
    return np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])


def angles(p: CameraParams, rng: np.random.Generator) -> list[tuple[float, float]]:
    """(azimuth, elevation) of the 7 views, jittered from ``rng`` when the config asks for it."""
    base = [(0.0, p.front_elevation)] + [
        (p.ring_start + 60.0 * k, p.ring_elevations[k % 2]) for k in range(N_VIEWS - 1)
    ]
    jitter = rng.uniform(-1.0, 1.0, size=(N_VIEWS, 2)) * [p.azimuth_jitter, p.elevation_jitter]
    # elevations stay off the poles, where "up" and the view direction would be parallel
    return [(float((az + da) % 360.0), float(np.clip(el + de, -85.0, 85.0))) for (az, el), (da, de) in zip(base, jitter)]


def seven_views(p: CameraParams, radius: float, rng: np.random.Generator) -> list[View]:
    """The 7 views of an object whose vertices lie within ``radius`` of the origin."""
    distance = p.distance if p.distance is not None else fit_distance(radius, p)
    K = intrinsics(p)
    return [View(az, el, distance, look_at(distance * direction(az, el)), K) for az, el in angles(p, rng)]


def suns(p: LightParams, rng: np.random.Generator) -> list[Sun]:
    out = []
    for _ in range(p.suns):
        az = rng.uniform(0.0, 360.0)
        # uniform over the spherical cap above min_elevation
        el = math.degrees(math.asin(rng.uniform(math.sin(math.radians(p.min_elevation)), 1.0)))
        scale = rng.uniform(1.0 - p.intensity_jitter, 1.0 + p.intensity_jitter)
        out.append(Sun(-direction(az, el), p.sun_intensity * scale))
    return out


def sun_pose(sun: Sun) -> np.ndarray:
    """4×4 pose, OpenGL axes, whose −z is the light's direction (how pyrender and Blender aim a sun)."""
    up = np.array([0.0, 1.0, 0.0]) if abs(sun.direction[1]) < 0.99 else np.array([1.0, 0.0, 0.0])
    return look_at(-sun.direction, up=up) @ OPENCV_TO_OPENGL


def project(view: View, points: np.ndarray) -> np.ndarray:
    """N×3 world points → N×2 pixel coordinates (pixel-corner origin)."""
    cam = (np.linalg.inv(view.pose) @ np.c_[points, np.ones(len(points))].T)[:3]
    uvw = view.K @ cam
    return (uvw[:2] / uvw[2]).T
