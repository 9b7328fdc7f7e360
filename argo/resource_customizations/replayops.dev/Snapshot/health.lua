-- Argo CD health of a replayops Snapshot (replayops.dev/v1alpha1), from the status the snapshot
-- Job writes: Ready with its pairs and window, or Failed with the reason.
local hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the replayops controller to cut it"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = string.format("Waiting for the controller to observe generation %d", generation)
  return hs
end
local said = nil
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.type == "Ready" and c.message ~= nil and c.message ~= "" then
      said = c.message
    end
  end
end
if status.phase == "Ready" then
  hs.status = "Healthy"
  hs.message = said or string.format("%d pairs", status.pairs or 0)
elseif status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = said or "Snapshot failed"
elseif status.phase == "Pending" then
  hs.status = "Progressing"
  hs.message = said or "Pending: waiting to be cut"
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(status.phase)
end
return hs
