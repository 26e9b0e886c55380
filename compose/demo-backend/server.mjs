// The demo backend of the compose cluster: it stands in for the oCIS services behind the proxy
// and answers every request with what it received, so that one `curl` through the load balancer
// shows the whole path: which service the route chose, the forwarded headers, and the
// `x-access-token` the gateway signed, decoded and checked against the shared secret.
//
// One process listens on one port per service it impersonates (`DEMO_SERVICES`, e.g.
// `web=9180,graph=9181`), because the proxy routes by backend address and the answer should say
// which oCIS service a path is routed to. `DEMO_JWT_SECRET` is the gateways' `OCIS_JWT_SECRET`.
// Node's standard library only: the image needs nothing but a Node.js binary.
import { createServer } from 'node:http';
import { createHmac, timingSafeEqual } from 'node:crypto';

const secret = process.env.DEMO_JWT_SECRET || '';
const listen = process.env.DEMO_LISTEN || '0.0.0.0';
const services = (process.env.DEMO_SERVICES || 'web=9180')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean)
  .map((s) => {
    const [name, port] = s.split('=');
    const n = Number(port);
    if (!name || !Number.isInteger(n) || n <= 0 || n > 65535) {
      console.error(`DEMO_SERVICES: "${s}" is not name=port`);
      process.exit(2);
    }
    return { name, port: n };
  });
if (!secret) {
  console.error('DEMO_JWT_SECRET is empty: set it to the gateways\' OCIS_JWT_SECRET');
  process.exit(2);
}

function b64json(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

// What a reva service would conclude about the token: HS256 with the shared secret, not expired.
function checkToken(token) {
  if (!token) return { present: false, verified: false, error: 'no x-access-token header' };
  const parts = token.split('.');
  if (parts.length !== 3) return { present: true, verified: false, error: 'not a JWT' };
  let header;
  let claims;
  try {
    header = b64json(parts[0]);
    claims = b64json(parts[1]);
  } catch (e) {
    return { present: true, verified: false, error: `undecodable: ${e.message}` };
  }
  const expected = createHmac('sha256', secret).update(`${parts[0]}.${parts[1]}`).digest();
  const given = Buffer.from(parts[2], 'base64url');
  const signed = header.alg === 'HS256' && given.length === expected.length
    && timingSafeEqual(given, expected);
  const now = Math.floor(Date.now() / 1000);
  const fresh = typeof claims.exp === 'number' && claims.exp > now;
  let error;
  if (!signed) error = 'signature does not match DEMO_JWT_SECRET';
  else if (!fresh) error = 'expired';
  return { present: true, verified: signed && fresh, error, header, claims };
}

for (const { name, port } of services) {
  const server = createServer((req, res) => {
    let received = 0;
    req.on('data', (chunk) => { received += chunk.length; });
    req.on('end', () => {
      const body = JSON.stringify({
        service: name,
        method: req.method,
        url: req.url,
        body_bytes: received,
        headers: req.headers,
        x_access_token: checkToken(req.headers['x-access-token']),
      }, null, 2);
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });
  server.listen(port, listen, () => console.log(`demo backend "${name}" listening on ${listen}:${port}`));
}

// As PID 1 in a container Node has no default SIGTERM handler: without this, stopping waits out
// the engine's grace period.
process.on('SIGTERM', () => process.exit(0));
