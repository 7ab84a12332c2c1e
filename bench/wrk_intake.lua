-- wrk script for bench/intake_http.py (written for it; run by it).
--   wrk ... -s bench/wrk_intake.lua URL -- fixed BODY_FILE
--       POST the same body on every request.
--   wrk ... -s bench/wrk_intake.lua URL -- signed EVENTS_FILE PREFIX_FILE SUFFIX_FILE THREADS
--       POST a distinct, correctly signed Stripe event per request: EVENTS_FILE has one
--       "<timestamp> <event id> <v1 signature>" line per event, signed over
--       PREFIX .. id .. SUFFIX; thread k of n sends lines k, k+n, k+2n, ... once each.
-- done() prints one "BENCH-RESULT key=value ..." line for the Python side to parse.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

local fixed_request
local events = {}
local prefix, suffix
local nthreads = 1
sent = 0
wrapped = 0
local index = 0

function init(args)
  if args[1] == "fixed" then
    fixed_request = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, slurp(args[2]))
    return
  end
  prefix, suffix = slurp(args[3]), slurp(args[4])
  nthreads = tonumber(args[5])
  local n = 0
  for line in io.lines(args[2]) do
    if n % nthreads == tid then
      table.insert(events, line)
    end
    n = n + 1
  end
end

function request()
  sent = sent + 1
  if fixed_request then
    return fixed_request
  end
  index = index + 1
  if index > #events then
    index = 1
    wrapped = wrapped + 1
  end
  local t, id, sig = events[index]:match("^(%d+) (%S+) (%x+)$")
  local headers = {
    ["Content-Type"] = "application/json",
    ["Stripe-Signature"] = "t=" .. t .. ",v1=" .. sig,
  }
  return wrk.format("POST", nil, headers, prefix .. id .. suffix)
end

function done(summary, latency, requests)
  local sent_total, wrapped_total = 0, 0
  for _, thread in ipairs(threads) do
    sent_total = sent_total + (thread:get("sent") or 0)
    wrapped_total = wrapped_total + (thread:get("wrapped") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH-RESULT duration_us=%d requests=%d sent=%d wrapped=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%d p99_us=%d\n",
    summary.duration, summary.requests, sent_total, wrapped_total, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
