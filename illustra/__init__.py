"""illustra: a messy folder of illustrations -> a clean dataset and a from-scratch classifier, with honest numbers."""

__version__ = "0.1.0"
