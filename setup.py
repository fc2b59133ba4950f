"""ament_python package g2vlm_ros; console scripts are listed in setup.cfg."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "g2vlm_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    # Explicit, so the nested g2vlm_interfaces (ament_cmake) never becomes part of this package.
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    # the embedded demo model (docs/demo_model.md): the default when no checkpoint is configured
    package_data={PACKAGE: ["demo_model/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="g2vlm_ros maintainers",
    maintainer_email="maintainers@g2vlm-ros.dev",
    description="G2VLM perception for ROS 2: depth, point clouds, camera poses and spatial questions.",
    license="Apache-2.0",
    extras_require={"test": ["pytest"]},
)
