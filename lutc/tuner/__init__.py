"""The tuner's pure parts: which knobs (space), how fast we think they are (model), and what
was measured (records). The driver that builds and times candidates is ``lutc.autotune``;
``lutc.build`` reads the records to compile the best candidate without tuning."""
from .model import CostModel, log_history, rank_correlation
from .records import TuningLog, best
from .space import Candidate, candidates, default_candidate, features

__all__ = ["CostModel", "log_history", "rank_correlation", "TuningLog", "best", "Candidate", "candidates",
           "default_candidate", "features"]
