"""The prelude every Lua script of ours starts with: the key names of ``llm_router.keys`` as locals,
and Redis' clock.

Scripts name their own KEYS and ARGV as locals right after it (``local record = KEYS[1]``), so the
body reads by name; their replies are decoded into typed objects next to the Python that runs them.
"""

from __future__ import annotations

from llm_router.keys import LUA_KEYS

LUA_PRELUDE = (
    LUA_KEYS
    + r"""
-- Redis' own clock in ms: every worker on every host reads the same one
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- an integer as Redis takes it (Lua numbers are doubles: tostring would give 1e+15)
local function fmt(x) return string.format('%d', math.floor(x)) end
"""
)
