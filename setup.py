"""gazejax: gaze-guided medical-imaging models in JAX/Flax (SAN+AAB, GG-CAM, CXRGazeLearn, GazAT)."""
from setuptools import find_packages, setup

setup(
    name="gazejax",
    version="0.1.0",
    description="Train medical-imaging models that learn from radiologists' eye gaze (JAX/Flax).",
    packages=find_packages(include=["gazejax", "gazejax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "einops>=0.8",
        "numpy>=1.26",
        "scipy>=1.12",
        "chex>=0.1.88",
        "ml-collections>=0.1.1",
        "absl-py>=2.1",
        "tensorboardX>=2.6",  # TensorBoard event files without importing TensorFlow
        "pydicom>=2.4",
        "nibabel>=5.2",
        "matplotlib>=3.8",
        "pillow>=10",
    ],
    extras_require={
        # tfds: array_record data sets through tfds.data_source, without TensorFlow; importlib_resources is needed
        # by tfds for builders defined in a package but not declared by it
        "tfds": ["tensorflow-datasets>=4.9", "array-record>=0.5", "importlib_resources"],
        "test": ["pytest>=8", "pytest-xdist>=3.5", "scikit-learn>=1.4", "pydicom-data",
                 "tensorflow-datasets>=4.9", "array-record>=0.5", "importlib_resources"],
    },
)
