-- Argo CD health check for orchestrator.io/TaskRun (resource.customizations.health.orchestrator.io_TaskRun).
-- Reads what the controller writes: observedGeneration, phase and the Succeeded condition.
local hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the taskrun-controller to pick up the TaskRun"
  return hs
end
if obj.metadata.generation ~= nil and status.observedGeneration ~= nil
    and status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe generation " .. obj.metadata.generation
  return hs
end
local message = status.message or ""
local reason = ""
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Succeeded" then
      reason = condition.reason or ""
      if condition.message ~= nil and condition.message ~= "" then
        message = condition.message
      end
    end
  end
end
if status.phase == "Succeeded" then
  hs.status = "Healthy"
elseif status.phase == "Failed" then
  hs.status = "Degraded"
elseif reason == "Suspended" then
  -- Its Job was suspended by hand: nothing progresses until it is resumed.
  hs.status = "Suspended"
else
  hs.status = "Progressing"
end
hs.message = status.phase .. ": " .. message
return hs
