// The TypeScript MCP SDK client (@modelcontextprotocol/sdk: the client of Claude Code, VS Code, Cursor and
// the Inspector), driven headlessly by a Python test over stdin/stdout, one line per step:
//   out "AUTHORIZE <url>"    the SDK wants the user's browser at <url> (the test plays the browser)
//   in  "CODE <code>"        the code from the redirect back; the script calls transport.finishAuth(code)
//   out "TOOLS <json>"       tools/list, then tools/call echo, after login
//   in  "GO"                 the client's access token has expired (the test waited)
//   out "PARALLEL <json>"    four tools/call in parallel: the SDK refreshes its token on the 401s
//   out "DONE <json>"        what the provider saw (registrations, token saves)
// Usage: node mcp_client.mjs '{"url": "...", "redirectUrl": "...", "clientMetadataUrl": "..."}'
import readline from 'node:readline';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

const cfg = JSON.parse(process.argv[2]);
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const say = (kind, value) => process.stdout.write(`${kind} ${typeof value === 'string' ? value : JSON.stringify(value)}\n`);
async function expect(kind) {
  const { value, done } = await lines.next();
  if (done || !value.startsWith(kind)) throw new Error(`expected ${kind}, got ${value}`);
  return value.slice(kind.length).trim();
}

const seen = { registrations: 0, tokenSaves: 0, refreshTokens: new Set() };
class Provider {
  constructor() { this.info = undefined; this.saved = undefined; this.verifier = undefined; }
  get redirectUrl() { return cfg.redirectUrl; }
  get clientMetadata() {
    return {
      client_name: 'TypeScript SDK test client',
      redirect_uris: [cfg.redirectUrl],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  }
  clientInformation() { return this.info; }
  saveClientInformation(info) { seen.registrations += 1; this.info = info; }
  tokens() { return this.saved; }
  saveTokens(tokens) {
    seen.tokenSaves += 1;
    if (tokens.refresh_token) seen.refreshTokens.add(tokens.refresh_token);
    this.saved = tokens;
  }
  redirectToAuthorization(url) { say('AUTHORIZE', url.toString()); }
  saveCodeVerifier(v) { this.verifier = v; }
  codeVerifier() { return this.verifier; }
}
const provider = new Provider();
if (cfg.clientMetadataUrl) provider.clientMetadataUrl = cfg.clientMetadataUrl;

function transport() {
  return new StreamableHTTPClientTransport(new URL(cfg.url), { authProvider: provider });
}

async function main() {
  let client = new Client({ name: 'sdk-test', version: '1.0.0' });
  const first = transport();
  try {
    await client.connect(first);
    throw new Error('connected without authorization');
  } catch (err) {
    if (!(err instanceof UnauthorizedError)) throw err;
  }
  await first.finishAuth(await expect('CODE'));
  client = new Client({ name: 'sdk-test', version: '1.0.0' });
  await client.connect(transport());
  const tools = await client.listTools();
  const echoed = await client.callTool({ name: 'echo', arguments: { text: 'hello' } });
  say('TOOLS', { tools: tools.tools.map((t) => t.name).sort(), echo: echoed.content });
  await expect('GO');
  const results = await Promise.allSettled([1, 2, 3, 4].map((n) => client.callTool({ name: 'add', arguments: { a: n, b: 1 } })));
  say('PARALLEL', results.map((r) => (r.status === 'fulfilled' ? r.value.content[0].text : `ERROR ${r.reason}`)));
  await client.close();
  say('DONE', { registrations: seen.registrations, tokenSaves: seen.tokenSaves, refreshTokens: seen.refreshTokens.size, clientId: provider.info?.client_id });
}

main().then(() => process.exit(0), (err) => { say('ERROR', String(err && err.stack || err)); process.exit(1); });
