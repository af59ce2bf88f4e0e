"""The batch worker, in three parts a newcomer can name:

- `store`: claiming and writing — the only SQL (lease claims, lease renewal, bulk result
  writes described once by ITEM_COLUMNS / ATTEMPT_COLUMNS, unwritable rows isolated);
- `execute`: executing one item — rate-limit admission, model resolution shared with
  streaming generation, the upstream call, the policy hook, the retry decision;
- `scheduler`: the scheduling loop — `BatchWorker` (claim, flush and maintenance loops).
"""

from batches.policy import LOCAL_PREFIX
from batches.worker.execute import ItemExecutor, JobRun, result_value
from batches.worker.scheduler import BatchWorker, progress_publish
from batches.worker.store import Claimed, JobNotActive, Outcome

__all__ = [
    "LOCAL_PREFIX",
    "BatchWorker",
    "Claimed",
    "ItemExecutor",
    "JobNotActive",
    "JobRun",
    "Outcome",
    "progress_publish",
    "result_value",
]
