-- Argo CD health of a replayops TrafficReplay (replayops.dev/v1alpha1), from the status the
-- replayops controller writes: phase, conditions and the summary of the finished run.
local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function figures(summary)
  local parts = {}
  if summary.requests ~= nil then
    table.insert(parts, string.format("%d requests", summary.requests))
  end
  if summary.successRate ~= nil then
    table.insert(parts, string.format("%.1f%% matched", summary.successRate * 100))
  end
  if summary.p99Ms ~= nil then
    table.insert(parts, string.format("p99 %.1f ms", summary.p99Ms))
  end
  if summary.mismatches ~= nil and summary.mismatches > 0 then
    table.insert(parts, string.format("%d mismatches", summary.mismatches))
  end
  if summary.mockMatchRate ~= nil then
    table.insert(parts, string.format("%.1f%% of mock requests matched", summary.mockMatchRate * 100))
  end
  return table.concat(parts, ", ")
end

local hs = {}
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the replayops controller"
  return hs
end

local stalled = condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.message
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = string.format("Waiting for the controller to observe generation %d", generation)
  return hs
end

local phase = status.phase or "Pending"
local ready = condition(status, "Ready")
local said = (ready ~= nil and ready.message ~= nil and ready.message ~= "") and ready.message or nil
local summary = status.summary or {}

if phase == "Pending" then
  hs.status = "Progressing"
  hs.message = said or "Pending: waiting to start"
elseif phase == "Running" then
  hs.status = "Progressing"
  hs.message = said or ("Running since " .. (status.startTime or "now"))
elseif phase == "Succeeded" then
  if summary.goalsMet == false then
    hs.status = "Degraded"
    hs.message = "Replay finished, goals not met: " .. figures(summary)
  else
    local done = figures(summary)
    hs.status = "Healthy"
    hs.message = "Replay finished: " .. ((done ~= "" and done) or said or "done")
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  if summary.goalsMet == false then
    hs.message = "Replay finished, goals not met: " .. figures(summary) .. ((said and ("; " .. said)) or "")
  else
    hs.message = said or "Replay failed"
  end
elseif phase == "Cancelled" then
  hs.status = "Degraded"
  hs.message = said or "Replay cancelled"
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
