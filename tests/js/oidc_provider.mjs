// panva's oidc-provider (OpenID Certified) as a test IdP, configured like an enterprise one:
// a confidential client with client_secret_basic, PKCE required, rotating refresh tokens, short access
// tokens, offline_access only with consent (the library's OIDC Core §11 default), Ed25519-signed id_tokens.
//
// Usage: node oidc_provider.mjs '<json config>'   (prints "READY <port>" on stdout once listening)
// config: { port, clientId, clientSecret, redirectUris: [...], accessTtl, idTokenAlg }
// Control endpoints (test only, loopback): GET /__stats (refresh counts), POST /__revoke_all (the user
// removed the app at the IdP: every grant is revoked).
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const cfg = JSON.parse(process.argv[2] || '{}');
const port = cfg.port || 0;

function key(type, alg, options = {}) {
  const { privateKey } = crypto.generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), alg, use: 'sig', kid: `${alg}-${crypto.randomUUID().slice(0, 8)}` };
}

const stats = { refresh_success: 0, refresh_error: 0, code_success: 0, errors: [] };
const grants = new Set();

const configuration = {
  clients: [{
    client_id: cfg.clientId,
    client_secret: cfg.clientSecret,
    redirect_uris: cfg.redirectUris,
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: cfg.idTokenAlg || 'Ed25519',
  }],
  jwks: { keys: [key('rsa', 'RS256', { modulusLength: 2048 }), key('ed25519', 'Ed25519')] },
  pkce: { required: () => true },
  rotateRefreshToken: true,
  ttl: {
    AccessToken: cfg.accessTtl || 20,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 86400,
    Grant: 86400,
    Session: 86400,
    Interaction: 600,
  },
  scopes: ['openid', 'offline_access', 'email', 'profile'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  features: { devInteractions: { enabled: true }, revocation: { enabled: true }, userinfo: { enabled: true } },
  findAccount: async (_ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub, email: sub.includes('@') ? sub : `${sub}@example.com`, email_verified: true, name: `User ${sub}` }),
  }),
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
};

const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, configuration);
provider.on('grant.success', (ctx) => {
  const type = ctx.oidc.params.grant_type;
  if (type === 'refresh_token') stats.refresh_success += 1;
  if (type === 'authorization_code') stats.code_success += 1;
});
provider.on('grant.error', (ctx, err) => {
  if (ctx.oidc?.params?.grant_type === 'refresh_token') stats.refresh_error += 1;
  stats.errors.push(`${ctx.oidc?.params?.grant_type}: ${err.error || err.message}`);
});
provider.on('grant.saved', (grant) => { grants.add(grant.jti); });
provider.on('server_error', (_ctx, err) => { stats.errors.push(`server_error: ${err.message}`); });

provider.use(async (ctx, next) => {
  if (ctx.path === '/__stats') {
    ctx.body = stats;
    return;
  }
  if (ctx.path === '/__revoke_all' && ctx.method === 'POST') {
    for (const jti of grants) {
      // eslint-disable-next-line no-await-in-loop
      await provider.Grant.adapter.destroy(jti);
      // eslint-disable-next-line no-await-in-loop
      await Promise.all(['RefreshToken', 'AccessToken', 'AuthorizationCode'].map(
        (model) => provider[model].adapter.revokeByGrantId(jti),
      ));
    }
    ctx.body = { revoked: grants.size };
    grants.clear();
    return;
  }
  await next();
});

const server = provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`READY ${server.address().port}\n`);
});
process.on('SIGTERM', () => { server.close(); process.exit(0); });
