"""`Engine`: many sequences at once on one model, with continuous batching.

Requests arrive and leave at any time. Each active request owns one of the model's slots
(`Model.load(..., n_seq=N)`); a step of the engine's thread runs at most one chunk of a new
prompt (so running streams keep producing tokens while a long prompt is read) and then one
decode step for every sequence that is generating, which reads the weights once for all of
them (`Model.decode_rows_sampled`). Each row has its own sampling chain and its own seeded
generator, so a request's tokens do not depend on what else runs beside it (up to the float
rounding of a batched product on GPU backends). A new prompt takes the free slot whose cached
tokens share the longest prefix with it, and evaluates only the rest.

The package is two halves: request.py, what a caller holds and iterates (Request, Usage,
TokenLogprob), and scheduler.py, the Engine and its thread. The names are re-exported here, so
`from fastllm.engine import Engine, Request` is the import path.
"""

from .request import FINISH_REASONS, Request, TokenLogprob, Usage
from .scheduler import ALONE_STEPS as ALONE_STEPS  # fastllm bench sizes its runs by it
from .scheduler import Engine, run_all

__all__ = ["FINISH_REASONS", "Engine", "Request", "TokenLogprob", "Usage", "run_all"]
