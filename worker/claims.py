"""arq's own queue, as this worker uses it: claiming due jobs with a lease, and arq's bookkeeping
at the end of a run. Both are Lua scripts on the worker's auto-pipeline (``Store.pipe``), where arq
itself claims each job with a WATCH/MULTI of three round trips and ends each run with a MULTI.
"""

from __future__ import annotations

import time

from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, retry_key_prefix
from redis.asyncio import Redis

from llm_router.autopipe import AutoPipeline

# KEYS: arq queue, then one arq in-progress key per job.  ARGV: now ms, lease ms, how many to claim
# at most, then the job ids.  Claims due jobs that no other worker holds, with a short lease that the
# holder's lease keeper refreshes, until it has claimed enough; returns the claimed ids and scores.
# Every worker reads the same front of the queue, so the script walks past jobs others hold rather
# than each worker trying only as many as it has room for.  One round trip for a whole poll, where
# arq's own claim costs three per job.
CLAIM_LUA = """
local out = {}
local now = tonumber(ARGV[1])
local room = tonumber(ARGV[3])
for i = 4, #ARGV do
  if room <= 0 then break end
  local key = KEYS[i - 2]
  if redis.call('EXISTS', key) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
    if score and tonumber(score) <= now then
      redis.call('SET', key, '1', 'PX', ARGV[2])
      out[#out + 1] = ARGV[i]
      out[#out + 1] = score
      room = room - 1
    end
  end
end
return out
"""

# arq's own end of a job run (``Worker.finish_job``'s MULTI) as one script, so it rides the worker's
# auto-pipeline with the record writes.  KEYS: in-progress, retry, job, queue, abort set.  ARGV: job
# id, 1 if the job is done with (else it runs again), score increment ('' for none), keep the
# in-progress key this many ms ('' to delete it).
ARQ_FINISH_LUA = """
if ARGV[4] == '' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
elseif ARGV[3] ~= '' then
  redis.call('ZINCRBY', KEYS[4], ARGV[3], ARGV[1])
end
return 1
"""


class Claims:
    """Claims and end-of-run bookkeeping on one arq queue."""

    def __init__(self, redis: Redis, pipe: AutoPipeline, queue_name: str) -> None:
        self.queue_name = queue_name
        self._pipe = pipe
        self._claim = redis.register_script(CLAIM_LUA)
        self._arq_finish = redis.register_script(ARQ_FINISH_LUA)

    async def claim(self, job_ids: list[str], lease_ms: int, room: int) -> list[tuple[str, int]]:
        """Claim up to ``room`` due, unheld jobs of ``job_ids`` with a lease; returns (job id, score)."""
        if not job_ids or room <= 0:
            return []
        keys = [self.queue_name, *(in_progress_key_prefix + j for j in job_ids)]
        flat = await self._pipe.eval(self._claim, keys, [int(time.time() * 1000), lease_ms, room, *job_ids])
        return [(flat[i].decode(), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]

    async def arq_finish(
        self, job_id: str, *, done: bool, incr_score: int | None, keep_in_progress_ms: int | None
    ) -> None:
        """arq's bookkeeping after a run (see ``ARQ_FINISH_LUA``)."""
        keys = [
            in_progress_key_prefix + job_id,
            retry_key_prefix + job_id,
            job_key_prefix + job_id,
            self.queue_name,
            abort_jobs_ss,
        ]
        args = [
            job_id,
            "1" if done else "0",
            "" if incr_score is None else incr_score,
            "" if keep_in_progress_ms is None else keep_in_progress_ms,
        ]
        await self._pipe.eval(self._arq_finish, keys, args)
