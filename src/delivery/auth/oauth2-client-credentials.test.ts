import { afterEach, describe, expect, it } from 'vitest';
import { Secret } from '../destinations.ts';
import { createAuth, type AuthConfig } from './index.ts';
import { gate, TestTokenServer, type TokenRequest } from '../../../test/support/token-server.ts';

const CLIENT_ID = 'trialbridge-registry';
const CLIENT_SECRET = 'test-only s3cret: with+reserved&chars';

let server: TestTokenServer | undefined;
afterEach(async () => {
  await server?.stop();
  server = undefined;
});

/** The client id and secret the request authenticated with, from Basic (RFC 6749 §2.3.1) or the body. */
function credentials(req: TokenRequest): { id?: string; secret?: string } {
  if (req.authorization?.startsWith('Basic ')) {
    const [id, secret] = Buffer.from(req.authorization.slice(6), 'base64').toString('utf8').split(':');
    return { id: decodeURIComponent(id.replace(/\+/g, ' ')), secret: decodeURIComponent(secret.replace(/\+/g, ' ')) };
  }
  return { id: req.form.client_id, secret: req.form.client_secret };
}

/** Checks grant, scope and credentials; answers token-1, token-2, ... valid `expiresIn` seconds. */
async function startServer(expiresIn = 3600, hold?: Promise<void>): Promise<TestTokenServer> {
  server = await new TestTokenServer(async (req, call) => {
    await hold;
    const { id, secret } = credentials(req);
    if (req.form.grant_type !== 'client_credentials') return { status: 400, body: { error: 'unsupported_grant_type' } };
    if (id !== CLIENT_ID || secret !== CLIENT_SECRET) return { status: 401, body: { error: 'invalid_client' } };
    if (req.form.scope !== 'system/*.write') return { status: 400, body: { error: 'invalid_scope' } };
    return { body: { access_token: `token-${call}`, token_type: 'Bearer', expires_in: expiresIn } };
  }).start();
  return server;
}

function config(tokenUrl: string, overrides: Partial<{ clientSecret: string; clientAuth: 'basic' | 'body' }> = {}): AuthConfig {
  return {
    type: 'oauth2-client-credentials',
    tokenUrl,
    clientId: CLIENT_ID,
    clientSecret: new Secret(overrides.clientSecret ?? CLIENT_SECRET, 'env TEST'),
    scope: 'system/*.write',
    clientAuth: overrides.clientAuth ?? 'basic',
  };
}

describe('oauth2-client-credentials', () => {
  for (const clientAuth of ['basic', 'body'] as const) {
    it(`authenticates with the client secret (${clientAuth}) and caches the token`, async () => {
      const tokens = await startServer();
      let now = 1_000_000;
      const auth = createAuth(config(tokens.tokenUrl, { clientAuth }), { now: () => now });
      for (let i = 0; i < 10; i++) expect(await auth.headers()).toEqual({ Authorization: 'Bearer token-1' });
      expect(tokens.calls).toBe(1);
      if (clientAuth === 'basic') {
        expect(tokens.requests[0].authorization).toMatch(/^Basic /);
        expect(tokens.requests[0].form).not.toHaveProperty('client_secret');
      } else {
        expect(tokens.requests[0].authorization).toBeUndefined();
      }
      now += 1000;
      expect(await auth.headers()).toEqual({ Authorization: 'Bearer token-1' });
      expect(tokens.calls).toBe(1);
    });
  }

  it('fetches a new token when expires_in minus the skew has passed', async () => {
    const tokens = await startServer(600);
    let now = 5_000_000;
    const auth = createAuth(config(tokens.tokenUrl), { now: () => now, skewMs: 30_000 });
    expect(await auth.headers()).toEqual({ Authorization: 'Bearer token-1' });
    now += 600_000 - 30_001;
    expect(await auth.headers()).toEqual({ Authorization: 'Bearer token-1' });
    now += 1;
    expect(await auth.headers()).toEqual({ Authorization: 'Bearer token-2' });
    expect(tokens.calls).toBe(2);
  });

  it('drops the token on 401 so the next call fetches a new one', async () => {
    const tokens = await startServer();
    const auth = createAuth(config(tokens.tokenUrl), { now: () => 0 });
    const first = await auth.headers();
    expect(first).toEqual({ Authorization: 'Bearer token-1' });
    await auth.onUnauthorized(first);
    expect(await auth.headers()).toEqual({ Authorization: 'Bearer token-2' });
    // A late 401 for token-1 does not throw away token-2.
    await auth.onUnauthorized(first);
    expect(await auth.headers()).toEqual({ Authorization: 'Bearer token-2' });
    await auth.onUnauthorized();
    expect(await auth.headers()).toEqual({ Authorization: 'Bearer token-3' });
    expect(tokens.calls).toBe(3);
  });

  it('makes concurrent callers share one refresh', async () => {
    const hold = gate();
    const tokens = await startServer(3600, hold.promise);
    const auth = createAuth(config(tokens.tokenUrl), { now: () => 0 });
    const waiting = Array.from({ length: 20 }, () => auth.headers());
    hold.open();
    const all = await Promise.all(waiting);
    expect(new Set(all.map((h) => h.Authorization))).toEqual(new Set(['Bearer token-1']));
    expect(tokens.calls).toBe(1);
  });

  it('a refused secret gives a clear error that does not contain the secret', async () => {
    const wrong = 'test-only wrong-secret-value';
    const tokens = await startServer();
    const auth = createAuth(config(tokens.tokenUrl, { clientSecret: wrong }), { now: () => 0 });
    const error = await auth.headers().then(
      () => undefined,
      (err: Error) => err,
    );
    expect(error?.message).toMatch(/token request to http:\/\/127\.0\.0\.1:\d+\/token refused: HTTP 401 invalid_client/);
    expect(error?.message).not.toContain(wrong);
    expect(error?.message).not.toContain(encodeURIComponent(wrong));
  });

  it('redacts a secret that the server echoes back', async () => {
    server = await new TestTokenServer((req) => ({
      status: 400,
      body: { error: 'invalid_request', error_description: `bad client_secret ${req.form.client_secret}` },
    })).start();
    const auth = createAuth(config(server.tokenUrl, { clientAuth: 'body' }), { now: () => 0 });
    const error = await auth.headers().catch((err: Error) => err);
    expect((error as Error).message).toContain('[redacted]');
    expect((error as Error).message).not.toContain(CLIENT_SECRET);
  });

  it('rejects a response without an access token, or of another token type', async () => {
    let body: unknown = { token_type: 'Bearer' };
    server = await new TestTokenServer(() => ({ body })).start();
    const auth = createAuth(config(server.tokenUrl), { now: () => 0 });
    await expect(auth.headers()).rejects.toThrow(/no access_token/);
    body = { access_token: 'x', token_type: 'DPoP' };
    await expect(auth.headers()).rejects.toThrow(/unsupported token_type/);
  });

  it('reports an unreachable token endpoint', async () => {
    const tokens = await startServer();
    const url = tokens.tokenUrl;
    await tokens.stop();
    const auth = createAuth(config(url), { now: () => 0 });
    await expect(auth.headers()).rejects.toThrow(/token request to http:\/\/127\.0\.0\.1:\d+\/token failed/);
  });
});
