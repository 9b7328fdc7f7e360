-- Argo CD health of a replayops CapturePolicy (replayops.dev/v1alpha1), from the status the
-- replayops controller writes: the Ready condition and the workloads the policy selects.
local hs = {}
local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the replayops controller"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = string.format("Waiting for the controller to observe generation %d", generation)
  return hs
end

local ready = nil
for _, c in ipairs(status.conditions) do
  if c.type == "Stalled" and c.status == "True" then
    hs.status = "Degraded"
    hs.message = c.message
    return hs
  end
  if c.type == "Ready" then
    ready = c
  end
end

if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = (ready ~= nil and ready.message) or "Waiting for the replayops controller"
  return hs
end
if ready.status == "False" then
  hs.status = "Degraded"
  hs.message = ready.message
  return hs
end

local stale = 0
for _, w in ipairs(status.selectedWorkloads or {}) do
  stale = stale + (w.stalePods or 0)
end
if stale > 0 then
  hs.status = "Progressing"
  hs.message = string.format("%s; %d pods without the current sidecar (rolling out)", ready.message, stale)
  return hs
end
hs.status = "Healthy"
hs.message = ready.message
return hs
