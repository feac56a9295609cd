"""scaleflow: plan, run and fit language-model scaling-law studies."""

__version__ = "0.1.0"
