// Preloaded into the conformance CLI (`node --import ./bearer.mjs`) when it tests a server behind the
// sidecar: the CLI has no option to send headers, and the sidecar answers 401 to a request without a token.
// Every request to MCP_CONFORMANCE_ORIGIN (and only there) gets `Authorization: Bearer $MCP_CONFORMANCE_BEARER`
// unless it already has one. Both ways the CLI makes requests go through undici's global dispatcher (the MCP
// SDK's fetch and the scenarios' undici.request), so one interceptor covers them; nothing else is changed.
import { Agent, setGlobalDispatcher } from "undici";

const token = process.env.MCP_CONFORMANCE_BEARER;
const origin = process.env.MCP_CONFORMANCE_ORIGIN;

function withBearer(headers) {
  const value = `Bearer ${token}`;
  if (headers == null) return { authorization: value };
  if (Array.isArray(headers)) {
    // flat [name, value, name, value, ...] or [[name, value], ...]
    const flat = headers.flat();
    for (let i = 0; i < flat.length; i += 2) if (String(flat[i]).toLowerCase() === "authorization") return headers;
    return [...flat, "authorization", value];
  }
  if (typeof headers[Symbol.iterator] === "function") return withBearer([...headers]);
  if (Object.keys(headers).some((k) => k.toLowerCase() === "authorization")) return headers;
  return { ...headers, authorization: value };
}

if (token && origin) {
  const target = new URL(origin).origin;
  const addBearer = (dispatch) => (opts, handler) => {
    const requestOrigin = opts.origin ? new URL(String(opts.origin)).origin : null;
    return dispatch(requestOrigin === target ? { ...opts, headers: withBearer(opts.headers) } : opts, handler);
  };
  setGlobalDispatcher(new Agent().compose(addBearer));
}
