-- Case (d) of `make bench`: what a Lua connector does. For each request, one
-- fire-and-forget httpCall to the node carrying the request's headers
-- (serialised as an HTTP/1 header block) and its whole body. Reading the body
-- makes Envoy buffer it before the request goes upstream. Nothing on response.

function envoy_on_request(request_handle)
  local lines = {}
  for name, value in pairs(request_handle:headers()) do
    lines[#lines + 1] = name .. ": " .. value
  end
  local payload = table.concat(lines, "\r\n") .. "\r\n\r\n"
  local body = request_handle:body()
  if body ~= nil and body:length() > 0 then
    payload = payload .. body:getBytes(0, body:length())
  end
  request_handle:httpCall("oob_mirror_node", {
    [":method"] = "POST",
    [":path"] = "/v1/lua",
    [":authority"] = "oob-mirror-node",
    ["content-type"] = "application/octet-stream",
  }, payload, { asynchronous = true, timeout_ms = 1000 })
end
