-- Runs the health check against TaskRun statuses: lua5.1 manifests/argocd/taskrun-health_test.lua
-- (Argo CD runs health checks in gopher-lua, which implements Lua 5.1.)
local here = arg[0]:match("(.*/)") or "./"
local check = assert(loadfile(here .. "taskrun-health.lua"))

local function health(o)
  obj = o
  return check()
end

local function taskrun(generation, status)
  return { metadata = { name = "t", generation = generation }, status = status }
end

local function condition(type_, status_, reason, message)
  return { type = type_, status = status_, reason = reason, message = message }
end

local failures, passed = 0, 0
local function expect(name, o, want, message_part)
  local got = health(o)
  local ok = got.status == want and (message_part == nil or string.find(got.message, message_part, 1, true) ~= nil)
  if not ok then
    failures = failures + 1
    print("FAIL " .. name .. ": want " .. want .. ", got " .. tostring(got.status) .. " (" .. tostring(got.message) .. ")")
  else
    passed = passed + 1
    print("ok   " .. name)
  end
end

expect("no status yet", taskrun(1, nil), "Progressing", "Waiting for the taskrun-controller")
expect("pending", taskrun(1, { phase = "Pending", observedGeneration = 1, message = "Job created",
  conditions = { condition("Succeeded", "Unknown", "JobCreated", "Job t-1-v1 created") } }), "Progressing", "Pending")
expect("running", taskrun(1, { phase = "Running", observedGeneration = 1,
  conditions = { condition("Succeeded", "Unknown", "Running", "1 pod running") } }), "Progressing", "1 pod running")
expect("succeeded", taskrun(1, { phase = "Succeeded", observedGeneration = 1,
  conditions = { condition("Ready", "True", "Completed", ""), condition("Succeeded", "True", "Completed", "Job completed") } }), "Healthy", "Succeeded")
expect("failed", taskrun(2, { phase = "Failed", observedGeneration = 2,
  conditions = { condition("Succeeded", "False", "BackoffLimitExceeded", "Job has reached the specified backoff limit") } }), "Degraded", "backoff limit")
expect("its Job suspended", taskrun(1, { phase = "Pending", observedGeneration = 1,
  conditions = { condition("Succeeded", "Unknown", "Suspended", "Job t-1-v1 is suspended") } }), "Suspended", "suspended")
expect("succeeded but a newer generation not yet observed", taskrun(3, { phase = "Succeeded", observedGeneration = 2 }), "Progressing", "generation 3")

if failures > 0 then
  print(failures .. " failed")
  os.exit(1)
end
print(passed .. " passed, 0 failed")
