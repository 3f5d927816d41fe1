"""LightningModules ("systems"), one per method. Import the one you need, e.g.
``from tsdiff.models.score_models import ScoreModule``."""
