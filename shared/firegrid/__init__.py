"""FireGrid: PyGrid's model-centric federated learning on Google Cloud functions."""

__version__ = "0.1.0"
