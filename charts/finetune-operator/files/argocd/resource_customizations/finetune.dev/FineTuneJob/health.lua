-- Argo CD health check for finetune.dev/FineTuneJob.
-- Runs without Lua's string/math libraries (argocd-cm checks get only base, table and a
-- reduced os), so it builds messages with `..` and tostring only.
local hs = { status = "Progressing", message = "waiting for the operator to pick up the job" }

local function condition(conditions, kind)
  if conditions == nil then return nil end
  for _, c in ipairs(conditions) do
    if c.type == kind then return c end
  end
  return nil
end

local function text(prefix, c)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return prefix .. ": " .. c.message
  end
  return prefix
end

-- "step 3/6 (50%), loss 1.21, ETA 40s" from status.progress; nil when there is none yet.
local function progress(p)
  if p == nil then return nil end
  local parts = {}
  if p.step ~= nil and p.totalSteps ~= nil then
    local s = "step " .. tostring(p.step) .. "/" .. tostring(p.totalSteps)
    if p.percent ~= nil then s = s .. " (" .. tostring(p.percent) .. "%)" end
    table.insert(parts, s)
  elseif p.percent ~= nil then
    table.insert(parts, tostring(p.percent) .. "%")
  end
  if p.phase ~= nil and p.phase ~= "training" then table.insert(parts, p.phase) end
  if p.trainLoss ~= nil then table.insert(parts, "loss " .. tostring(p.trainLoss)) end
  if p.etaSeconds ~= nil then table.insert(parts, "ETA " .. tostring(p.etaSeconds) .. "s") end
  if #parts == 0 then return nil end
  return table.concat(parts, ", ")
end

local status = obj.status
if status == nil or status.state == nil then
  return hs
end

-- A status written for an older generation (e.g. before runPolicy.suspend changed) is stale.
local generation = obj.metadata ~= nil and obj.metadata.generation or nil
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.message = "the operator has not yet observed generation " .. tostring(generation) ..
    " (status is for " .. tostring(status.observedGeneration) .. ")"
  return hs
end

local conditions = status.conditions
local state = status.state

if state == "Succeeded" then
  hs.status = "Healthy"
  if status.adapter ~= nil and status.adapter.uri ~= nil then
    hs.message = "Succeeded: adapter at " .. status.adapter.uri
  else
    hs.message = text("Succeeded", condition(conditions, "Succeeded"))
  end
elseif state == "Failed" then
  hs.status = "Degraded"
  local failure = status.failure
  local c = condition(conditions, "Failed")
  if failure ~= nil and failure.reason ~= nil then
    hs.message = failure.reason
    if failure.message ~= nil and failure.message ~= "" then hs.message = hs.message .. ": " .. failure.message end
  elseif c ~= nil and c.reason ~= nil then
    hs.message = text(c.reason, c)
  else
    hs.message = "Failed"
  end
elseif state == "Suspended" then
  hs.status = "Suspended"
  hs.message = text("Suspended", condition(conditions, "Suspended"))
elseif state == "Running" then
  local p = progress(status.progress)
  if p ~= nil then
    hs.message = "Running: " .. p
  else
    hs.message = text("Running", condition(conditions, "Running"))
  end
elseif state == "Validating" then
  hs.message = text("Validating", condition(conditions, "Validated"))
elseif state == "Inspecting" then
  hs.message = text("Inspecting", condition(conditions, "Inspected"))
elseif state == "Queued" then
  hs.message = text("Queued", condition(conditions, "Scheduled"))
else
  hs.status = "Unknown"
  hs.message = "unknown state " .. tostring(state)
end
return hs
