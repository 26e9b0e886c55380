// A real OpenID provider (panva's certified oidc-provider) for the Gatehouse end-to-end tests.
//
// Why it looks like this:
// - Tests need tokens without a browser, so the static client `gw-test` may use a resource-owner
//   password grant. It mints the provider's own AccessToken/IdToken models, so tokens are signed,
//   stored and answered at userinfo/introspection exactly like tokens from the other grants.
// - `resource=<uri>` yields a JWT access token with that audience (the gateway's `jwt` verification
//   path); without it the access token is opaque. Stock oidc-provider cannot look JWT access
//   tokens up at userinfo, but oCIS' built-in IdP can and oCIS calls userinfo with them, so each
//   JWT gets an opaque twin (same grant, scope and claims) that userinfo is asked with instead.
// - Optional grant parameters craft tokens for role/MFA/space tests from a real IdP:
//   `acr` (into the access token, the id_token and userinfo), `sid` (default: a fresh random one,
//   into the access token and id_token), `extra_claims` (a JSON object merged last into the access
//   token claims; a null value removes that claim; registered claims such as iss/sub/aud/exp win).
// - The signing key is RSA, identified by `IDP_KID` (default `k1`). With `IDP_KEYS_FILE` keys are
//   kept in that file by kid, so restarting with the same kid reuses the key and restarting with
//   another kid is a key rotation. `IDP_EXTRA_KIDS` (comma separated) publishes further keys in the
//   JWKS without signing with them (rotation with overlap). `IDP_STORE_SIZE` bounds the in-memory
//   store (default 200000 entries; the oldest tokens and grants are dropped beyond it).
// - `/__admin/*` lets tests count requests per path and inject failures (status, Retry-After,
//   delay) in front of the provider's own routes, and end a session by sending a back-channel
//   logout token, signed with the provider's key, to a relying party.
// - `IDP_ISSUER` replaces the issuer `http://127.0.0.1:<port>` and `IDP_LISTEN` the listening
//   address `127.0.0.1`, for a provider in a container that other containers reach by name.
//
// Usage: node provider.mjs <port>
import Provider, { errors } from 'oidc-provider';
// Internals of the exactly pinned version: the in-memory store keeps only 1000 entries (about 330
// password-grant JWTs with grant and twin), too few for load tests.
import { setStorage } from 'oidc-provider/lib/adapters/memory_adapter.js';
import LRU from 'oidc-provider/lib/helpers/lru.js';
import { createPrivateKey, generateKeyPairSync, randomUUID, sign as cryptoSign } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync, renameSync } from 'node:fs';

const port = Number(process.argv[2] || 9130);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(`invalid port ${process.argv[2]}`);
  process.exit(2);
}
const issuer = process.env.IDP_ISSUER || `http://127.0.0.1:${port}`;

const USERS = {
  einstein: {
    password: 'relativity',
    claims: {
      email: 'einstein@example.org', email_verified: true, name: 'Albert Einstein',
      preferred_username: 'einstein', groups: ['users', 'sailing-lovers', 'violin-haters', 'physics-lovers'],
      roles: ['ocisAdmin'],
    },
  },
  marie: {
    password: 'radioactivity',
    claims: {
      email: 'marie@example.org', email_verified: true, name: 'Marie Curie',
      preferred_username: 'marie', groups: ['users', 'radium-lovers', 'polonium-lovers', 'physics-lovers'],
      roles: ['ocisUser'],
    },
  },
  newton: {
    password: 'gravity',
    claims: {
      email: 'newton@example.org', email_verified: true, name: 'Isaac Newton',
      preferred_username: 'newton', groups: [],
    },
  },
};

const SCOPE_CLAIMS = {
  openid: ['sub'],
  email: ['email', 'email_verified'],
  profile: ['name', 'preferred_username'],
  groups: ['groups'],
  roles: ['roles'],
};

// ---- keys ----------------------------------------------------------------------------------
function loadKeys() {
  const signingKid = process.env.IDP_KID || 'k1';
  const extraKids = (process.env.IDP_EXTRA_KIDS || '').split(',').map((s) => s.trim()).filter(Boolean);
  const file = process.env.IDP_KEYS_FILE;
  let stored = {};
  if (file && existsSync(file)) stored = JSON.parse(readFileSync(file, 'utf8'));
  let changed = false;
  const keys = [];
  // The signing key comes first: oidc-provider signs id_tokens with the first matching key.
  for (const kid of [signingKid, ...extraKids.filter((k) => k !== signingKid)]) {
    if (!stored[kid]) {
      const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
      stored[kid] = { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig', alg: 'RS256' };
      changed = true;
    }
    keys.push(stored[kid]);
  }
  if (file && changed) {
    writeFileSync(`${file}.tmp`, JSON.stringify(stored));
    renameSync(`${file}.tmp`, file);
  }
  return { signingKid, keys };
}
const { signingKid, keys } = loadKeys();

function signJwt(header, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const input = `${b64(header)}.${b64(claims)}`;
  const key = createPrivateKey({ key: keys[0], format: 'jwk' });
  return `${input}.${cryptoSign('sha256', Buffer.from(input), key).toString('base64url')}`;
}

// ---- per-token data handed from the password grant to the token formatters -----------------
const TOKEN_EXTRA = new WeakMap(); // AccessToken -> claims merged into the token
const OPAQUE_TWIN = new Map(); // JWT access token -> { opaque, exp }

function twinFor(jwt) {
  const twin = OPAQUE_TWIN.get(jwt);
  if (!twin) return undefined;
  if (twin.exp * 1000 <= Date.now()) {
    OPAQUE_TWIN.delete(jwt);
    return undefined;
  }
  return twin.opaque;
}

function resourceServerInfo(resource) {
  return {
    scope: 'api openid profile email groups roles',
    audience: resource,
    accessTokenFormat: 'jwt',
    accessTokenTTL: 600,
    jwt: { sign: { alg: 'RS256', kid: signingKid } },
  };
}

const config = {
  jwks: { keys },
  clients: [
    {
      client_id: 'gw-test', client_secret: 'gw-secret', redirect_uris: ['http://127.0.0.1:9999/cb'],
      grant_types: ['authorization_code', 'refresh_token', 'client_credentials', 'password'],
      response_types: ['code'], scope: 'openid profile email groups roles offline_access api',
    },
    {
      client_id: 'web', token_endpoint_auth_method: 'none', redirect_uris: ['http://127.0.0.1:9999/cb'],
      grant_types: ['authorization_code'], response_types: ['code'],
    },
  ],
  claims: { ...SCOPE_CLAIMS, acr: null },
  // Listing acr values makes `acr` a supported claim (userinfo drops unsupported ones); the
  // password grant accepts any value.
  acrValues: ['pwd', 'mfa'],
  scopes: ['openid', 'offline_access', 'api'],
  findAccount: async (_ctx, sub, token) => {
    const user = USERS[sub];
    if (!user) return undefined;
    return {
      accountId: sub,
      claims: async () => {
        const acr = token?.extra?.acr;
        return { sub, ...user.claims, ...(acr ? { acr } : {}) };
      },
    };
  },
  extraTokenClaims: async (_ctx, token) => TOKEN_EXTRA.get(token),
  formats: {
    customizers: {
      jwt: async (_ctx, _token, jwt) => {
        for (const [k, v] of Object.entries(jwt.payload)) if (v === null) delete jwt.payload[k];
      },
    },
  },
  loadExistingGrant: async (ctx) => { // skips the consent prompt of the interactive flow
    const id = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (id) return ctx.oidc.provider.Grant.find(id);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid profile email groups roles offline_access');
    grant.addOIDCClaims(['email', 'name', 'preferred_username', 'groups', 'roles']);
    grant.addResourceScope('urn:gw', 'api openid profile email groups roles');
    await grant.save();
    return grant;
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource) => resourceServerInfo(resource),
    },
  },
  pkce: { required: () => false },
  ttl: { AccessToken: 600, IdToken: 600, AuthorizationCode: 60, Interaction: 600, Session: 3600, Grant: 3600, ClientCredentials: 600 },
};

setStorage(new LRU({ maxSize: Number(process.env.IDP_STORE_SIZE) || 200000 }));
const provider = new Provider(issuer, config);

// ---- resource-owner password grant ---------------------------------------------------------
function parseExtraClaims(raw) {
  if (raw === undefined || raw === '') return {};
  let value;
  try {
    value = JSON.parse(raw);
  } catch {
    throw new errors.InvalidRequest('extra_claims is not JSON');
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new errors.InvalidRequest('extra_claims must be a JSON object');
  }
  return value;
}

provider.registerGrantType('password', async (ctx) => {
  const {
    username, password, scope = 'openid', resource, acr, sid: sidParam, extra_claims: extraRaw,
  } = ctx.oidc.params;
  const user = USERS[username];
  if (!user || user.password !== password) throw new errors.InvalidGrant('invalid credentials');
  const extraClaims = parseExtraClaims(extraRaw);
  const { client } = ctx.oidc;
  const scopes = new Set(scope.split(' ').filter(Boolean));
  const sid = sidParam || randomUUID();

  const grant = new provider.Grant({ accountId: username, clientId: client.clientId });
  grant.addOIDCScope([...scopes].join(' '));
  if (acr) grant.addOIDCClaims(['acr']);
  const grantId = await grant.save();

  // Claims a resource server sees in the JWT: the granted profile claims, roles, acr, sid.
  const userClaims = {};
  for (const [s, names] of Object.entries(SCOPE_CLAIMS)) {
    if (scopes.has(s)) for (const n of names) if (n in user.claims) userClaims[n] = user.claims[n];
  }
  if (user.claims.roles) userClaims.roles = user.claims.roles;
  const extra = { ...userClaims, sid, ...(acr ? { acr } : {}), ...extraClaims };

  const newAccessToken = () => {
    const token = new provider.AccessToken({ accountId: username, client, grantId, scope: [...scopes].join(' '), gty: 'password' });
    if (acr) token.claims = { userinfo: { acr: null } };
    TOKEN_EXTRA.set(token, extra);
    return token;
  };
  const at = newAccessToken();
  if (resource) {
    if (typeof resource !== 'string') throw new errors.InvalidTarget('only one resource is supported');
    at.resourceServer = new provider.ResourceServer(resource, resourceServerInfo(resource));
  }
  const accessToken = await at.save();
  if (resource) {
    const { exp } = JSON.parse(Buffer.from(accessToken.split('.')[1], 'base64url').toString('utf8'));
    OPAQUE_TWIN.set(accessToken, { opaque: await newAccessToken().save(), exp });
    if (OPAQUE_TWIN.size % 1000 === 0) for (const jwt of OPAQUE_TWIN.keys()) twinFor(jwt);
  }

  const idClaims = { sub: username, ...user.claims };
  const idt = new provider.IdToken(idClaims, { ctx, client });
  idt.scope = [...scopes].join(' ');
  idt.set('at_hash', accessToken);
  idt.set('sid', sid);
  if (acr) idt.set('acr', acr);
  const body = {
    access_token: accessToken, token_type: 'Bearer', expires_in: at.expiration, scope: at.scope,
  };
  if (scopes.has('openid')) body.id_token = await idt.issue({ use: 'idtoken' });
  ctx.body = body;
}, ['username', 'password', 'scope', 'resource', 'acr', 'sid', 'extra_claims']);

// ---- test administration: request counts and injected failures -----------------------------
const stats = new Map();
let failures = []; // { path, status, retry_after, delay_ms, remaining (null = until cleared) }

async function readJson(ctx) {
  const chunks = [];
  for await (const c of ctx.req) chunks.push(c);
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text) return {};
  return JSON.parse(text);
}

async function admin(ctx) {
  const route = `${ctx.method} ${ctx.path}`;
  switch (route) {
    case 'GET /__admin/stats':
      ctx.body = Object.fromEntries(stats);
      return;
    case 'POST /__admin/reset':
      stats.clear();
      ctx.status = 204;
      return;
    case 'POST /__admin/clear':
      failures = [];
      ctx.status = 204;
      return;
    case 'GET /__admin/failures':
      ctx.body = failures;
      return;
    case 'POST /__admin/fail': {
      let spec;
      try {
        spec = await readJson(ctx);
      } catch {
        ctx.status = 400; ctx.body = { error: 'body is not JSON' };
        return;
      }
      const ok = typeof spec.path === 'string'
        && (spec.status === undefined || spec.status === null || (Number.isInteger(spec.status) && spec.status >= 100 && spec.status < 600))
        && (spec.status != null || Number.isInteger(spec.delay_ms))
        && (spec.count == null || (Number.isInteger(spec.count) && spec.count > 0));
      if (!ok) {
        ctx.status = 400;
        ctx.body = { error: 'expected {"path": string, "status"?: 100..599, "retry_after"?: seconds, "delay_ms"?: ms, "count"?: n|null}' };
        return;
      }
      failures = failures.filter((f) => f.path !== spec.path);
      failures.push({
        path: spec.path,
        status: spec.status ?? null,
        retry_after: spec.retry_after ?? null,
        delay_ms: spec.delay_ms ?? 0,
        remaining: spec.count ?? null,
      });
      ctx.status = 204;
      return;
    }
    case 'POST /__admin/backchannel-logout': {
      // Ends a session the way an OpenID provider does: signs a logout token with its own key
      // and POSTs it to the relying party's back-channel logout URI (`target`).
      let spec;
      try {
        spec = await readJson(ctx);
      } catch {
        ctx.status = 400; ctx.body = { error: 'body is not JSON' };
        return;
      }
      if (typeof spec.target !== 'string' || (spec.sid == null && spec.sub == null)) {
        ctx.status = 400;
        ctx.body = { error: 'expected {"target": url, "sid"?: string, "sub"?: string}' };
        return;
      }
      const now = Math.floor(Date.now() / 1000);
      const claims = {
        iss: issuer, aud: 'gw-test', iat: now, exp: now + 120, jti: randomUUID(),
        events: { 'http://schemas.openid.net/event/backchannel-logout': {} },
      };
      if (spec.sid != null) claims.sid = spec.sid;
      if (spec.sub != null) claims.sub = spec.sub;
      const token = signJwt({ alg: 'RS256', typ: 'logout+jwt', kid: signingKid }, claims);
      const started = Date.now();
      const res = await fetch(spec.target, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ logout_token: token }).toString(),
      });
      ctx.body = { status: res.status, body: await res.text(), ms: Date.now() - started };
      return;
    }
    default:
      ctx.status = 404;
      ctx.body = { error: `no admin route ${route}` };
  }
}

provider.use(async (ctx, next) => {
  if (ctx.path.startsWith('/__admin/')) {
    await admin(ctx);
    return;
  }
  const started = Date.now();
  stats.set(ctx.path, (stats.get(ctx.path) || 0) + 1);
  const rule = failures.find((f) => f.path === ctx.path);
  if (rule) {
    if (rule.remaining !== null) {
      rule.remaining -= 1;
      if (rule.remaining <= 0) failures = failures.filter((f) => f !== rule);
    }
    if (rule.delay_ms > 0) await new Promise((resolve) => { setTimeout(resolve, rule.delay_ms); });
  }
  if (ctx.path === '/me') {
    const [scheme, value] = (ctx.get('authorization') || '').split(' ');
    const twin = scheme?.toLowerCase() === 'bearer' && value ? twinFor(value) : undefined;
    if (twin) ctx.req.headers.authorization = `Bearer ${twin}`;
  }
  if (rule && rule.status !== null) {
    ctx.status = rule.status;
    if (rule.retry_after !== null) ctx.set('Retry-After', String(rule.retry_after));
    ctx.body = { error: 'injected_failure', error_description: `injected by /__admin/fail for ${ctx.path}` };
  } else {
    await next();
  }
  console.log(`${ctx.method} ${ctx.path} ${ctx.status} ${Date.now() - started}ms${rule ? ' (injected)' : ''}`);
});

provider.on('server_error', (_ctx, err) => console.error('server_error', err));

provider.listen(port, process.env.IDP_LISTEN || '127.0.0.1', () => {
  console.log(`oidc-provider listening at ${issuer}, signing kid ${signingKid}, jwks kids ${keys.map((k) => k.kid).join(',')}`);
});

// As PID 1 in a container Node has no default SIGTERM handler: without this, stopping waits out
// the engine's grace period.
process.on('SIGTERM', () => process.exit(0));
